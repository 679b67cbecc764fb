/*
 * kafka_transaction.c
 *		librdkafka's transactional producer calls (init, begin, commit,
 *		abort), each turned into a verdict: done, call again, abort the
 *		transaction, or drop the producer.
 *
 * librdkafka flags each error of these calls: fatal (the producer must be
 * destroyed: fenced by a newer producer with the same transactional.id, or
 * an idempotence error it cannot recover from), requiring an abort (the
 * transaction failed, the producer lives on), or retriable (the same call
 * may be made again and resumes what is under way: a timeout, a
 * coordinator being elected).  An error with none of these flags leaves
 * the producer's state unknown to us, so it is taken as fatal: the caller
 * rebuilds the producer and recovers from Kafka what committed.
 *
 * The calls block the calling process for up to their timeout; the caller
 * serves delivery reports before committing, so a commit only ends the
 * transaction.
 *
 * A topic the broker refuses to add to the transaction (AddPartitionsToTxn:
 * no Write ACL, an internal topic) fails the transaction in the background:
 * librdkafka 2.0.2 purges its messages without an error of their own and
 * says why only in its log (kafka_txn_take_refusal reads it from there).
 */
#include "postgres.h"

#include "kafka_log.h"
#include "kafka_transaction.h"

static KafkaTxnResult
verdict_of(rd_kafka_error_t *error, KafkaTxnVerdict unflagged)
{
	KafkaTxnResult result = {KAFKA_TXN_DONE, RD_KAFKA_RESP_ERR_NO_ERROR, ""};

	if (error == NULL)
		return result;
	result.code = rd_kafka_error_code(error);
	strlcpy(result.message, rd_kafka_error_string(error), sizeof(result.message));
	if (rd_kafka_error_is_fatal(error))
		result.verdict = KAFKA_TXN_FATAL;
	else if (rd_kafka_error_txn_requires_abort(error))
		result.verdict = KAFKA_TXN_ABORT;
	else if (rd_kafka_error_is_retriable(error))
		result.verdict = KAFKA_TXN_RETRY;
	else
		result.verdict = unflagged;
	rd_kafka_error_destroy(error);
	return result;
}

/*
 * Fence earlier producers with our transactional.id and end their
 * transaction: an open one is aborted, one being committed is waited for.
 */
KafkaTxnResult
kafka_txn_init(rd_kafka_t *rk, int timeout_ms)
{
	return verdict_of(rd_kafka_init_transactions(rk, timeout_ms), KAFKA_TXN_FATAL);
}

/* Begin a transaction; a failure logged before it is not its own. */
KafkaTxnResult
kafka_txn_begin(rd_kafka_t *rk)
{
	char		earlier[KAFKA_TXN_MESSAGE_LEN];

	(void) kafka_log_take_transaction_error(earlier, sizeof(earlier));
	return verdict_of(rd_kafka_begin_transaction(rk), KAFKA_TXN_FATAL);
}

/*
 * A commit whose verdict is not DONE may still have committed (fatal) or
 * may yet commit (retry): only an abort verdict says it did not.
 */
KafkaTxnResult
kafka_txn_commit(rd_kafka_t *rk, int timeout_ms)
{
	return verdict_of(rd_kafka_commit_transaction(rk, timeout_ms), KAFKA_TXN_FATAL);
}

KafkaTxnResult
kafka_txn_abort(rd_kafka_t *rk, int timeout_ms)
{
	return verdict_of(rd_kafka_abort_transaction(rk, timeout_ms), KAFKA_TXN_FATAL);
}

/*
 * Did the open transaction fail because the broker refused one of its
 * topics?  librdkafka then logged (facility TXNERR) the transaction's
 * failure, the error's name last, in parentheses: "Current transaction
 * failed in state InTransaction: Failed to add partition(s) to transaction
 * on broker ...: Broker: Topic authorization failed (after 1 ms)
 * (TOPIC_AUTHORIZATION_FAILED)".  If so, *result gets the refusal's code and
 * that line.  The line names no topic: the caller finds which.
 */
bool
kafka_txn_take_refusal(KafkaTxnResult *result)
{
	static const rd_kafka_resp_err_t refusals[] = {
		RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
		RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION,
	};
	char		line[KAFKA_TXN_MESSAGE_LEN];
	size_t		i;

	if (!kafka_log_take_transaction_error(line, sizeof(line)))
		return false;
	for (i = 0; i < lengthof(refusals); i++)
	{
		char		name[128];

		snprintf(name, sizeof(name), "(%s)", rd_kafka_err2name(refusals[i]));
		if (strstr(line, name) != NULL)
		{
			result->verdict = KAFKA_TXN_ABORT;
			result->code = refusals[i];
			strlcpy(result->message, line, sizeof(result->message));
			return true;
		}
	}
	return false;
}

/* Did a newer producer with our transactional.id take over? */
bool
kafka_txn_fenced(const KafkaTxnResult *result)
{
	return result->code == RD_KAFKA_RESP_ERR__FENCED ||
		result->code == RD_KAFKA_RESP_ERR_PRODUCER_FENCED;
}

/*
 * Did the transaction outlive transaction.timeout.ms?  Its messages time
 * out then (message.timeout.ms follows transaction.timeout.ms), or the
 * coordinator, having aborted it, bumped the producer's epoch (brokers
 * since Kafka 2.5 answer a real fencing with PRODUCER_FENCED instead).
 */
bool
kafka_txn_timed_out(const KafkaTxnResult *result)
{
	return result->code == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT ||
		result->code == RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE ||
		result->code == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH;
}
