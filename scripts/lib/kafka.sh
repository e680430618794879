# shellcheck shell=bash disable=SC2153 # KAFKA_PORT etc. come from common.sh
# Kafka: Apache Kafka jars from Maven Central, single-node KRaft (broker+controller).

KAFKA_POM="$SCRIPTS_DIR/kafka/pom.xml"
KAFKA_DIR="$INFRA_HOME/kafka"
KAFKA_DATA_DIR="$KAFKA_DIR/data"
KAFKA_LOG="$LOG_DIR/kafka.log"
KAFKA_PIDFILE="$RUN_DIR/kafka.pid"
# Same-machine instances differ by INFRA_HOME, which is in the config path.
KAFKA_PATTERN="kafka.Kafka $KAFKA_DIR/server.properties"
: "${KAFKA_HEAP_OPTS:=-Xms256m -Xmx1g}"

kafka_endpoint() { printf '%s:%s\n' "$INFRA_HOST" "$KAFKA_PORT"; }

# The classpath is derived from the POM only, so it is cached per POM content and
# shared by all INFRA_HOMEs; Maven (seconds, even offline) runs only when needed.
kafka_classpath_file() {
  printf '%s/kafka-%s.classpath\n' "$INFRA_CACHE" "$(sha256sum "$KAFKA_POM" | cut -c1-16)"
}

kafka_classpath_ok() {
  local f jar
  f="$(kafka_classpath_file)"
  [[ -s "$f" ]] || return 1
  local IFS=:
  for jar in $(<"$f"); do [[ -f "$jar" ]] || return 1; done
}

# Resolve (downloading if needed) the Kafka jars; print nothing, fail if Maven fails.
kafka_install() {
  kafka_classpath_ok && return 0
  local f tmp
  f="$(kafka_classpath_file)"
  mkdir -p "$INFRA_CACHE"
  tmp="$(mktemp "$f.XXXXXX")"
  say "resolving Kafka jars from Maven Central (log: $INSTALL_LOG)"
  if ! mvn_quiet -f "$KAFKA_POM" dependency:build-classpath -Dmdep.outputFile="$tmp"; then
    rm -f "$tmp"
    return 1
  fi
  mv -f "$tmp" "$f"
}

kafka_classpath() { kafka_classpath_ok && cat "$(kafka_classpath_file)"; }

# A real Kafka Metadata request (v4, the oldest version Kafka 4 still serves)
# over bash's /dev/tcp: no JVM start, so `status` stays fast. Succeeds only if the
# broker answers with at least one live broker, which in KRaft means the
# controller is elected and the broker is registered and unfenced.
#   request: size=20 | api_key=3 | api_version=4 | correlation_id=7 |
#            client_id="infra" | topics=[] (none) | allow_auto_topic_creation=false
#   response: size | correlation_id | throttle_time_ms | brokers count | ...
kafka_probe() {
  local port="${1:-$KAFKA_PORT}" bytes
  # shellcheck disable=SC2016 # $0/$1 belong to the inner bash
  bytes="$(timeout 5 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "\x00\x00\x00\x14\x00\x03\x00\x04\x00\x00\x00\x07\x00\x05infra\x00\x00\x00\x00\x00" >&3
    head -c 16 <&3 | od -An -tu1' "$INFRA_HOST" "$port" 2>/dev/null)" || return 1
  local -a b
  read -r -a b <<<"$bytes"
  ((${#b[@]} == 16)) || return 1
  # correlation id echoed back, then a non-zero broker count
  [[ "${b[*]:4:4}" == "0 0 0 7" ]] || return 1
  (((b[12] << 24 | b[13] << 16 | b[14] << 8 | b[15]) >= 1))
}

kafka_alive() { kafka_probe "$KAFKA_PORT"; }

# Run a Kafka main class as a short-lived tool (kafka-run, storage format):
# small heap, logs at WARN on stderr so stdout carries only the tool's output.
kafka_tool() {
  # shellcheck disable=SC2086 # option lists are meant to word-split
  java ${KAFKA_RUN_JAVA_OPTS:--Xmx512m -XX:+UseSerialGC} -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SCRIPTS_DIR/kafka/tools-log4j2.xml" \
    -cp "$(kafka_classpath)" "$@"
}

kafka_render_config() {
  mkdir -p "$KAFKA_DATA_DIR"
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
    -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
    -e "s|@KAFKA_DATA_DIR@|$KAFKA_DATA_DIR|g" \
    "$SCRIPTS_DIR/kafka/server.properties" >"$KAFKA_DIR/server.properties"
}

# KRaft needs the log dir formatted with a cluster id exactly once; the id is
# kept in meta.properties, so re-formatting is skipped on later starts.
kafka_format() {
  [[ -f "$KAFKA_DATA_DIR/meta.properties" ]] && return 0
  local id
  id="$(kafka_tool kafka.tools.StorageTool random-uuid 2>>"$KAFKA_LOG")" ||
    die kafka "could not generate a cluster id" "$KAFKA_LOG"
  kafka_tool kafka.tools.StorageTool format --cluster-id "$id" \
    --config "$KAFKA_DIR/server.properties" >>"$KAFKA_LOG" 2>&1 ||
    die kafka "storage format failed" "$KAFKA_LOG"
}

kafka_start() {
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_open "$p" && die kafka "port $p is in use by another process (not an answering Kafka broker)" "$KAFKA_LOG"
  done
  mkdir -p "$LOG_DIR"
  kafka_render_config
  kafka_format
  # shellcheck disable=SC2086
  spawn kafka "$KAFKA_LOG" java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SCRIPTS_DIR/kafka/log4j2.xml" \
    -Dkafka.logs.dir="$LOG_DIR" \
    -cp "$(kafka_classpath)" kafka.Kafka "$KAFKA_DIR/server.properties"
}

kafka_wait() {
  wait_ready kafka "${KAFKA_START_TIMEOUT:-120}" "$KAFKA_LOG" "$KAFKA_PIDFILE" "$KAFKA_PATTERN" kafka_alive
}

kafka_configure() { :; }

# Controlled shutdown of a single node is quick; SIGKILL only if it hangs.
kafka_stop() { stop_pid kafka "$KAFKA_PIDFILE" "$KAFKA_PATTERN" TERM 60; }
