# shellcheck shell=bash disable=SC2034 # variables are used by the files sourcing this one
# Shared settings and helpers for scripts/infra and scripts/kafka-run.
# Sourced, never executed. Everything here is side-effect free except functions
# that say otherwise, so that `infra env` / `infra status` stay read-only.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SCRIPTS_DIR="$REPO_ROOT/scripts"

: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"

# Absolute, so pidfiles/configs stay valid whatever the caller's cwd; `-m` so we
# don't have to create it just to print `env`.
INFRA_HOME="$(realpath -m "${INFRA_HOME:-$REPO_ROOT/.data}")"
LOG_DIR="$INFRA_HOME/logs"
INSTALL_LOG="$LOG_DIR/install.log"
INFRA_HOST=127.0.0.1

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
REGISTRY_PORT="${REGISTRY_PORT:-8081}"
POSTGRES_PORT="${POSTGRES_PORT:-5432}"
REDIS_PORT="${REDIS_PORT:-6379}"
MYSQL_PORT="${MYSQL_PORT:-3306}"

# Maven is told the local repo explicitly so we know where artifacts land (the
# Apicurio tarball is read straight from it). Downloads + derived artifacts
# (classpath file, unpacked registry) are shared by every INFRA_HOME on the machine.
M2_REPO="${MAVEN_REPO_LOCAL:-$HOME/.m2/repository}"
INFRA_CACHE="${INFRA_CACHE:-$HOME/.m2/platform-infra}"

# In start order: a service comes after the ones it needs (the registry keeps its
# schemas in postgres); `down` goes in reverse.
ALL_SERVICES=(kafka postgres registry redis mysql)
# Started only when named (`scripts/infra up zipkin`), never by a plain `up`.
OPTIONAL_SERVICES=(zipkin)

# Unix sockets are limited to ~107 bytes; a deep INFRA_HOME would make
# postgres/mariadb fail with an obscure error, so fall back to a short /tmp path.
run_dir() {
  local d="$INFRA_HOME/run"
  if ((${#d} > 80)); then
    d="/tmp/infra-run-$(printf '%s' "$INFRA_HOME" | md5sum | cut -c1-12)"
  fi
  printf '%s\n' "$d"
}
RUN_DIR="$(run_dir)"

say() { printf 'infra: %s\n' "$*" >&2; }

# The one-line failure contract: service, cause, where to look. Exits.
die() {
  local svc="$1" cause="$2" log="${3:-}"
  printf 'infra: ERROR: %s: %s%s\n' "$svc" "$cause" "${log:+ (log: $log)}" >&2
  exit 1
}

is_root() { [[ "$(id -u)" == 0 ]]; }

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$INFRA_HOST/$1" 2>/dev/null
}

# pid_of PIDFILE PATTERN: print the pid if it is alive AND its command line
# contains PATTERN. The pattern guards against pid reuse after a reboot/kill, so
# `down` never signals a process that merely inherited a stale pid.
pid_of() {
  local pidfile="$1" pattern="$2" pid cmd
  [[ -r "$pidfile" ]] || return 1
  pid="$(head -n1 "$pidfile" 2>/dev/null | tr -dc 0-9)"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmd" == *"$pattern"* ]] || return 1
  printf '%s\n' "$pid"
}

# spawn NAME LOGFILE CMD...: start CMD detached (own session, so it survives the
# caller's terminal/job being torn down) and record its pid in $RUN_DIR/NAME.pid.
# setsid execs in place here (we are not a process-group leader), so $! is the
# service's own pid.
spawn() {
  local name="$1" log="$2"
  shift 2
  mkdir -p "$RUN_DIR" "$(dirname "$log")"
  printf '\n===== %s starting %s =====\n' "$(date -Is)" "$name" >>"$log"
  # 9>&-: don't leak the up/down lock fd into a daemon that outlives us.
  setsid "$@" >>"$log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN_DIR/$name.pid"
}

# wait_ready SVC TIMEOUT LOG PIDFILE PATTERN CHECK...: poll CHECK until it
# succeeds; fail fast (one line) if the process dies or the timeout passes.
wait_ready() {
  local svc="$1" timeout="$2" log="$3" pidfile="$4" pattern="$5"
  shift 5
  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! pid_of "$pidfile" "$pattern" >/dev/null; then
      sleep 0.5 # the process may have just exec'd; re-check once before blaming it
      pid_of "$pidfile" "$pattern" >/dev/null ||
        die "$svc" "process exited during startup: $(last_error_line "$log")" "$log"
    fi
    sleep 0.5
  done
  die "$svc" "did not answer on $INFRA_HOST within ${timeout}s" "$log"
}

# Best-effort hint for the one-line error: last line that looks like an error.
last_error_line() {
  local line
  line="$(grep -aiE 'error|fatal|exception|refus|denied|in use' "$1" 2>/dev/null | tail -n1 | cut -c1-200)"
  printf '%s\n' "${line:-see log}"
}

# stop_pid SVC PIDFILE PATTERN SIGNAL TIMEOUT: graceful stop, SIGKILL as last resort.
stop_pid() {
  local svc="$1" pidfile="$2" pattern="$3" sig="$4" timeout="$5" pid
  if ! pid="$(pid_of "$pidfile" "$pattern")"; then
    rm -f "$pidfile"
    return 1
  fi
  kill "-$sig" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + timeout))
  while [[ -e "/proc/$pid" ]] && ((SECONDS < deadline)); do sleep 0.3; done
  if [[ -e "/proc/$pid" ]]; then
    say "$svc did not stop within ${timeout}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while [[ -e "/proc/$pid" ]]; do sleep 0.2; done
  fi
  rm -f "$pidfile"
}

# --- installation ---------------------------------------------------------

# Debian postinst scripts start the system-wide postgres/redis/mariadb they
# install; those would squat our ports and are not ours to manage. A
# policy-rc.d that says 101 ("action forbidden") stops that, and we only add
# one if the machine has none (containers usually ship one already).
apt_install() {
  local pkgs=("$@") sudo=() created_policy=0 rc=0
  if ! is_root; then
    command -v sudo >/dev/null || return 1
    sudo=(sudo -n)
  fi
  mkdir -p "$LOG_DIR"
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null &&
      "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d && created_policy=1
  fi
  say "installing apt packages: ${pkgs[*]} (log: $INSTALL_LOG)"
  {
    "${sudo[@]}" apt-get update &&
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}"
  } >>"$INSTALL_LOG" 2>&1 || rc=$?
  if ((created_policy)); then "${sudo[@]}" rm -f /usr/sbin/policy-rc.d; fi
  return "$rc"
}

java_ok() {
  command -v java >/dev/null || return 1
  local v
  v="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/{print $2}')"
  [[ -n "$v" && "${v%%.*}" -ge 17 ]]
}

# mvn_quiet ARGS...: run maven non-interactively, output to the install log.
mvn_quiet() {
  mkdir -p "$LOG_DIR"
  mvn -B -q -Dmaven.repo.local="$M2_REPO" "$@" >>"$INSTALL_LOG" 2>&1
}
