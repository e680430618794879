# shellcheck shell=bash
# Schema registry: Apicurio Registry (Quarkus app from Maven Central), used through
# its Confluent-compatible API (ccompat v7). It keeps schemas, ids and rules in its own
# database on the PostgreSQL at $POSTGRES_PORT (Apicurio's SQL storage), so a restart,
# even after kill -9, keeps every schema under the id it had.

# 3.0.9 is the newest 3.x built for Java 17 (3.3.x ships Java 21 class files).
APICURIO_VERSION="${APICURIO_VERSION:-3.0.9}"
# What `up` sets as the global compatibility rule when the registry has none.
REGISTRY_COMPATIBILITY="${REGISTRY_COMPATIBILITY:-BACKWARD}"
# The registry's database on the postgres at $POSTGRES_PORT. The default INFRA_HOME
# uses `registry`; any other INFRA_HOME gets `registry_<first 12 hex of md5(INFRA_HOME)>`,
# so an isolated registry on the shared postgres never shares the shared registry's tables.
registry_default_db() {
  if [[ "$INFRA_HOME" == "$(realpath -m "$REPO_ROOT/.data")" ]]; then
    echo registry
  else
    printf 'registry_%s\n' "$(printf '%s' "$INFRA_HOME" | md5sum | cut -c1-12)"
  fi
}
REGISTRY_DB="${REGISTRY_DB:-$(registry_default_db)}"
# Connections per registry (Apicurio's default keeps 20 open); tests run several registries.
: "${REGISTRY_DB_POOL_MIN:=2}" "${REGISTRY_DB_POOL_MAX:=20}"
: "${REGISTRY_HEAP_OPTS:=-Xms64m -Xmx512m}"

REGISTRY_DIR="$INFRA_HOME/registry"
REGISTRY_LOG="$LOG_DIR/registry.log"
REGISTRY_PIDFILE="$RUN_DIR/registry.pid"
REGISTRY_DIST="$INFRA_CACHE/apicurio-registry-app-$APICURIO_VERSION"
# -Dinfra.home tags the process with its INFRA_HOME (the jar path is shared).
REGISTRY_PATTERN="-Dinfra.home=$INFRA_HOME "

registry_base() { printf 'http://%s:%s\n' "$INFRA_HOST" "$REGISTRY_PORT"; }
registry_endpoint() { printf '%s/apis/ccompat/v7\n' "$(registry_base)"; }

# 3.0.x ships a legacy "-runner.jar" layout, 3.1+ the Quarkus fast-jar layout.
registry_jar() {
  local j
  for j in "$REGISTRY_DIST/apicurio-registry-app-$APICURIO_VERSION-runner.jar" "$REGISTRY_DIST/quarkus-run.jar"; do
    [[ -f "$j" ]] && { printf '%s\n' "$j"; return 0; }
  done
  return 1
}

registry_install() {
  [[ -f "$REGISTRY_DIST/.complete" ]] && registry_jar >/dev/null && return 0
  local gav="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all"
  local tgz="$M2_REPO/io/apicurio/apicurio-registry-app/$APICURIO_VERSION/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz"
  if [[ ! -f "$tgz" ]]; then
    say "downloading $gav from Maven Central (log: $INSTALL_LOG)"
    # Plugin 2.8 on purpose: 3.x reads the artifact's POM, whose parent
    # (io.apicurio:apicurio-registry) is not published, and fails even with
    # -Dtransitive=false.
    mvn_quiet org.apache.maven.plugins:maven-dependency-plugin:2.8:get \
      -Dartifact="$gav" -Dtransitive=false || return 1
  fi
  local tmp
  mkdir -p "$INFRA_CACHE"
  tmp="$(mktemp -d "$INFRA_CACHE/.apicurio.XXXXXX")"
  tar -xzf "$tgz" -C "$tmp" || { rm -rf "$tmp"; return 1; }
  touch "$tmp/.complete"
  rm -rf "$REGISTRY_DIST"
  mv "$tmp" "$REGISTRY_DIST"
}

registry_jdbc_url() { printf 'jdbc:postgresql://%s:%s/%s\n' "$INFRA_HOST" "$POSTGRES_PORT" "$REGISTRY_DB"; }

registry_http() { curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$@"; }

registry_alive() {
  [[ "$(registry_http "$(registry_endpoint)/subjects")" == 200 ]]
}

# Creates the registry's database if it is missing (Apicurio creates its tables).
# Runs over TCP as `platform`, so it works for the postgres of any INFRA_HOME.
registry_ensure_database() {
  [[ "$REGISTRY_DB" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] ||
    die registry "REGISTRY_DB='$REGISTRY_DB' is not a plain lower-case PostgreSQL name"
  postgres_alive ||
    die registry "needs PostgreSQL at $(postgres_endpoint) for its storage and nothing answers there (scripts/infra up postgres)"
  local psql=("$(pg_bin)/psql" -X -Atq -v ON_ERROR_STOP=1 "$(postgres_url)")
  local exists="select 1 from pg_database where datname = '$REGISTRY_DB'" attempt
  # Bounded retry: CREATE DATABASE fails while another session uses template1.
  for attempt in 1 2 3 4 5; do
    [[ "$("${psql[@]}" -c "$exists" 2>>"$REGISTRY_LOG")" == 1 ]] && return 0
    "${psql[@]}" -c "create database \"$REGISTRY_DB\" owner platform" >>"$REGISTRY_LOG" 2>&1 && return 0
    sleep "$attempt"
  done
  die registry "creating database $REGISTRY_DB on $(postgres_endpoint) failed" "$REGISTRY_LOG"
}

registry_start() {
  port_open "$REGISTRY_PORT" &&
    die registry "port $REGISTRY_PORT is in use by another process (not an answering registry)" "$REGISTRY_LOG"
  mkdir -p "$REGISTRY_DIR/tmp" "$LOG_DIR"
  # 3.0.9 ships org.postgresql.postgresql-42.7.4.jar in lib/ (fast-jar layouts: lib/main/).
  [[ -n "$(find "$REGISTRY_DIST" -name 'org.postgresql.postgresql-*.jar' -print -quit)" ]] ||
    die registry "no PostgreSQL JDBC driver (org.postgresql.postgresql-*.jar) in $REGISTRY_DIST"
  registry_ensure_database
  # cwd + tmpdir under INFRA_HOME: Quarkus reads ./config and writes temp files.
  # shellcheck disable=SC2086
  (cd "$REGISTRY_DIR" && spawn registry "$REGISTRY_LOG" java $REGISTRY_HEAP_OPTS \
    -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
    -Dinfra.home="$INFRA_HOME" \
    -Djava.io.tmpdir="$REGISTRY_DIR/tmp" \
    -Dquarkus.http.host="$INFRA_HOST" -Dquarkus.http.port="$REGISTRY_PORT" \
    -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=postgresql \
    -Dapicurio.datasource.url="$(registry_jdbc_url)" \
    -Dapicurio.datasource.username=platform -Dapicurio.datasource.password=platform \
    -Dapicurio.datasource.jdbc.initial-size="$REGISTRY_DB_POOL_MIN" \
    -Dapicurio.datasource.jdbc.min-size="$REGISTRY_DB_POOL_MIN" \
    -Dapicurio.datasource.jdbc.max-size="$REGISTRY_DB_POOL_MAX" \
    -jar "$(registry_jar)")
}

registry_wait() {
  wait_ready registry "${REGISTRY_START_TIMEOUT:-180}" "$REGISTRY_LOG" "$REGISTRY_PIDFILE" "$REGISTRY_PATTERN" registry_alive
}

# Apicurio enforces nothing by default (global compatibility NONE). The rules live
# in the registry's database, so they are created only when missing: a restart keeps
# them, and a rule someone changed on purpose is left as it is.
# - compatibility via ccompat `PUT /config`: it stores a real global rule, which
#   `GET /config` reports and `PUT /config {"compatibility":"NONE"}` can remove.
#   (The -Dapicurio.rules.global.compatibility default is invisible to GET /config
#   and cannot be switched off through ccompat, so it is not used.)
# - validity FULL via the v3 admin API: rejects syntactically valid JSON that is not
#   a valid schema when the type is known.
registry_configure() {
  local rules code
  rules="$(curl -sf --max-time 5 "$(registry_base)/apis/registry/v3/admin/rules")" ||
    die registry "reading the global rules (GET /apis/registry/v3/admin/rules) failed" "$REGISTRY_LOG"
  if [[ "$rules" != *'"VALIDITY"'* ]]; then
    code="$(registry_http -X POST -H 'Content-Type: application/json' \
      -d '{"ruleType":"VALIDITY","config":"FULL"}' "$(registry_base)/apis/registry/v3/admin/rules")"
    [[ "$code" == 204 || "$code" == 409 ]] ||
      die registry "enabling the global VALIDITY rule failed (HTTP $code)" "$REGISTRY_LOG"
  fi
  if [[ "$rules" != *'"COMPATIBILITY"'* ]]; then
    code="$(registry_http -X PUT -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
      -d "{\"compatibility\":\"$REGISTRY_COMPATIBILITY\"}" "$(registry_endpoint)/config")"
    [[ "$code" == 200 ]] ||
      die registry "setting global compatibility $REGISTRY_COMPATIBILITY failed (HTTP $code)" "$REGISTRY_LOG"
  fi
}

registry_stop() { stop_pid registry "$REGISTRY_PIDFILE" "$REGISTRY_PATTERN" TERM 30; }
