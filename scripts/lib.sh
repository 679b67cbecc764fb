# scripts/lib.sh: shell helpers shared by scripts/deps, scripts/kafka,
# scripts/test, scripts/demo and CI. Source it from bash:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Functions (all print to stdout what they compute):
#   ep_root                 absolute path of the repository root
#   ep_cache                $REPO/.cache (git-ignored; kafka-libs/ holds the jars)
#   ep_kafka_versions       the Kafka versions the harness runs, the default first
#   ep_kafka_version [V]    V, or the default when V is empty; dies, listing
#                           the supported ones, if it is not one of them
#   ep_kafka_libs V         $REPO/.cache/kafka-libs/V, the jars of Kafka V
#   ep_test_user            user that runs clusters, tests and Kafka: "postgres"
#                           when we are root (PostgreSQL refuses to run as root),
#                           else the current user
#   ep_as_test_user [NAME=VALUE...] CMD [ARG...]
#                           run CMD as the test user with PATH and the given
#                           variables preserved (plain exec when not root)
#   ep_workdir              $REPO/.build (git-ignored), created and owned by the
#                           test user so that it can write test output there
#   ep_grant_test_user_access
#                           when root: make the repository reachable by the test
#                           user (o+x on ancestors that lack it); fails clearly
#                           if that is still not enough
#   ep_die MSG / ep_log MSG error / progress messages on stderr
# shellcheck shell=bash

# Repository root: this file lives in $REPO/scripts.
ep_root() {
	local here
	here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
	dirname "$here"
}

ep_cache() {
	printf '%s/.cache\n' "$(ep_root)"
}

# 3.9.1 first: Debian 12's librdkafka 2.0.2 was written against the 3.x
# protocol versions. scripts/kafka-runtime.pom.xml has a logging profile per
# major line (3: log4j 1.x, 4: log4j2), so a new 3.x or 4.x is added here.
ep_kafka_versions() {
	echo 3.9.1 4.1.1
}

ep_kafka_version() {
	local want=${1:-} v
	if [ -z "$want" ]; then
		read -r want _ <<<"$(ep_kafka_versions)"
	fi
	for v in $(ep_kafka_versions); do
		if [ "$v" = "$want" ]; then
			echo "$v"
			return 0
		fi
	done
	ep_die "unsupported Kafka version '$want' (supported: $(ep_kafka_versions))"
}

ep_kafka_libs() {
	printf '%s/kafka-libs/%s\n' "$(ep_cache)" "${1:?ep_kafka_libs needs a Kafka version}"
}

ep_log() {
	printf '%s: %s\n' "${EP_PROG:-$(basename "$0")}" "$*" >&2
}

ep_die() {
	printf '%s: error: %s\n' "${EP_PROG:-$(basename "$0")}" "$*" >&2
	exit 1
}

ep_test_user() {
	if [ "$(id -u)" -eq 0 ]; then
		if ! id -u postgres >/dev/null 2>&1; then
			ep_die "running as root, but OS user 'postgres' does not exist (it comes with the postgresql-common package: run scripts/deps)"
		fi
		echo postgres
	else
		id -un
	fi
}

# ep_as_test_user [NAME=VALUE...] CMD [ARG...]
# runuser (like su without --login) keeps the environment but resets PATH,
# so PATH is passed explicitly, together with any leading NAME=VALUE words.
ep_as_test_user() {
	if [ "$(id -u)" -eq 0 ]; then
		local user
		user=$(ep_test_user) || return 1
		runuser -u "$user" -- env PATH="$PATH" "$@"
	else
		env "$@"
	fi
}

# Make every ancestor of the repository traversable by the test user, so that
# it can read the sources, the jars in .cache and write into .build. Only
# adds o+x (search, not listing) where needed, and says so.
ep_grant_test_user_access() {
	[ "$(id -u)" -eq 0 ] || return 0
	local user repo d
	user=$(ep_test_user) || return 1
	repo=$(ep_root)
	if runuser -u "$user" -- test -r "$repo/scripts/lib.sh"; then
		return 0
	fi
	# From / down, so that each folder is tested once its parents are open.
	d=""
	local part
	local -a parts
	IFS=/ read -ra parts <<<"${repo#/}"
	for part in "${parts[@]}"; do
		d+="/$part"
		if ! runuser -u "$user" -- test -x "$d"; then
			ep_log "granting o+x on $d so that user $user can reach $repo"
			chmod o+x "$d"
		fi
	done
	runuser -u "$user" -- test -r "$repo/scripts/lib.sh" ||
		ep_die "user $user cannot read $repo even after o+x on its ancestors; make the checkout world-readable (chmod -R o+rX $repo) or clone it elsewhere"
}

# $REPO/.build, writable by the test user.
ep_workdir() {
	local dir user
	dir="$(ep_root)/.build"
	mkdir -p "$dir"
	if [ "$(id -u)" -eq 0 ]; then
		user=$(ep_test_user) || return 1
		ep_grant_test_user_access >&2 || return 1
		# Recursive: earlier root-run output left in there must be reusable.
		chown -R "$user": "$dir"
	fi
	printf '%s\n' "$dir"
}
