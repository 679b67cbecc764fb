/*
 * kafka_transaction.h
 *		The transactional producer's calls (kafka_transaction.c): each
 *		returns what the caller must do next, whatever librdkafka's error;
 *		and whether the broker refused a topic of the open transaction.
 */
#ifndef EVENTPIPE_KAFKA_TRANSACTION_H
#define EVENTPIPE_KAFKA_TRANSACTION_H

#include "postgres.h"

#include <librdkafka/rdkafka.h>

/* What a transactional call's error calls for. */
typedef enum KafkaTxnVerdict
{
	KAFKA_TXN_DONE,				/* it went through */
	KAFKA_TXN_RETRY,			/* call it again (a timeout, no coordinator yet) */
	KAFKA_TXN_ABORT,			/* abort the transaction, then go on */
	KAFKA_TXN_FATAL				/* the producer is unusable: drop it */
} KafkaTxnVerdict;

#define KAFKA_TXN_MESSAGE_LEN 512

/* A failed call: its verdict, librdkafka's code and message. */
typedef struct KafkaTxnResult
{
	KafkaTxnVerdict verdict;
	rd_kafka_resp_err_t code;
	char		message[KAFKA_TXN_MESSAGE_LEN];
} KafkaTxnResult;

extern KafkaTxnResult kafka_txn_init(rd_kafka_t *rk, int timeout_ms);
extern KafkaTxnResult kafka_txn_begin(rd_kafka_t *rk);
extern KafkaTxnResult kafka_txn_commit(rd_kafka_t *rk, int timeout_ms);
extern KafkaTxnResult kafka_txn_abort(rd_kafka_t *rk, int timeout_ms);
extern bool kafka_txn_take_refusal(KafkaTxnResult *result);
extern bool kafka_txn_fenced(const KafkaTxnResult *result);
extern bool kafka_txn_timed_out(const KafkaTxnResult *result);

#endif							/* EVENTPIPE_KAFKA_TRANSACTION_H */
