# shellcheck shell=bash
# Zipkin: the trace UI and span store (in memory), `io.zipkin:zipkin-server:<v>:exec` from
# Maven Central, run with `java -jar`. Optional: only `scripts/infra up zipkin` starts it.
# Services send spans to http://127.0.0.1:$ZIPKIN_PORT/api/v2/spans
# (OTEL_EXPORTER_ZIPKIN_ENDPOINT); the UI is at http://127.0.0.1:$ZIPKIN_PORT/zipkin/.

ZIPKIN_VERSION="${ZIPKIN_VERSION:-3.5.1}"
ZIPKIN_PORT="${ZIPKIN_PORT:-9411}"
: "${ZIPKIN_HEAP_OPTS:=-Xms64m -Xmx512m}"

ZIPKIN_DIR="$INFRA_HOME/zipkin"
ZIPKIN_LOG="$LOG_DIR/zipkin.log"
ZIPKIN_PIDFILE="$RUN_DIR/zipkin.pid"
ZIPKIN_JAR="$M2_REPO/io/zipkin/zipkin-server/$ZIPKIN_VERSION/zipkin-server-$ZIPKIN_VERSION-exec.jar"
# -Dinfra.home tags the process with its INFRA_HOME (the jar path is shared).
ZIPKIN_PATTERN="-Dinfra.home=$INFRA_HOME "

zipkin_base() { printf 'http://%s:%s\n' "$INFRA_HOST" "$ZIPKIN_PORT"; }
zipkin_endpoint() { printf '%s/api/v2/spans\n' "$(zipkin_base)"; }

zipkin_install() {
  [[ -f "$ZIPKIN_JAR" ]] && return 0
  say "downloading io.zipkin:zipkin-server:$ZIPKIN_VERSION:exec from Maven Central (log: $INSTALL_LOG)"
  mvn_quiet org.apache.maven.plugins:maven-dependency-plugin:2.8:get \
    -Dartifact="io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec" -Dtransitive=false
}

zipkin_alive() {
  [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$(zipkin_base)/health")" == 200 ]]
}

zipkin_start() {
  port_open "$ZIPKIN_PORT" &&
    die zipkin "port $ZIPKIN_PORT is in use by another process (not an answering zipkin)" "$ZIPKIN_LOG"
  mkdir -p "$ZIPKIN_DIR/tmp" "$LOG_DIR"
  # In-memory storage (the default); bound to 127.0.0.1 only.
  # shellcheck disable=SC2086
  (cd "$ZIPKIN_DIR" && spawn zipkin "$ZIPKIN_LOG" java $ZIPKIN_HEAP_OPTS \
    -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
    -Dinfra.home="$INFRA_HOME" \
    -Djava.io.tmpdir="$ZIPKIN_DIR/tmp" \
    -jar "$ZIPKIN_JAR" \
    --armeria.ports[0].ip="$INFRA_HOST" --armeria.ports[0].port="$ZIPKIN_PORT" \
    --armeria.ports[0].protocols[0]=http)
}

zipkin_wait() {
  wait_ready zipkin "${ZIPKIN_START_TIMEOUT:-120}" "$ZIPKIN_LOG" "$ZIPKIN_PIDFILE" "$ZIPKIN_PATTERN" zipkin_alive
}

zipkin_configure() { :; }

zipkin_stop() { stop_pid zipkin "$ZIPKIN_PIDFILE" "$ZIPKIN_PATTERN" TERM 30; }
