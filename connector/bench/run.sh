#!/usr/bin/env bash
# Side-by-side benchmark: this connector vs Debezium's PostgreSQL connector in
# Kafka Connect standalone, same PostgreSQL, broker and workload, one run.
# Fetches Kafka Connect and the Debezium plugin archive from Maven Central
# (pom.xml beside this script), builds the connector in release mode, and
# prints a table. Uses POSTGRES_URL / KAFKA_BOOTSTRAP_SERVERS (platform env).
#
#   connector/bench/run.sh [--rows N] [--changes N] [--latency-rate N] [--latency-secs N]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [ ! -d "$here/target/plugins/debezium-connector-postgres" ] || [ ! -d "$here/target/connect-lib" ]; then
  (cd "$here" && mvn -q -B package)
fi
(cd "$root" && cargo build --release -p connector)
exec "$root/target/release/connector" bench --debezium-home "$here/target" "$@"
