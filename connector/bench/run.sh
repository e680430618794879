#!/usr/bin/env bash
# The connector benchmark with Debezium beside it: fetches Kafka Connect and
# Debezium's PostgreSQL connector plugin from Maven Central (pom.xml beside
# this script) into connector/bench/target, then runs `scripts/bench connector`
# (the connector against pg_recvlogical and COPY, and the tuned Debezium).
#
#   connector/bench/run.sh [--rows N] [--changes N] [--rounds N] [--latency-rate N] [--latency-secs N]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [ ! -d "$here/target/plugins/debezium-connector-postgres" ] || [ ! -d "$here/target/connect-lib" ]; then
  (cd "$here" && mvn -q -B package)
fi
exec "$root/scripts/bench" connector --debezium-home "$here/target" "$@"
