#!/bin/sh
# docker-compose.kafka.yml: give the Apicurio registry the rules `scripts/infra up` sets:
# global BACKWARD compatibility + VALIDITY FULL, each only if missing (rules are stored in
# the registry's database with the schemas, so a rule changed on purpose stays as it is).
# See scripts/README.md for why this goes through the API and not a -D default.
set -eu
base="${REGISTRY_BASE:-http://schema-registry:8080}"
curl -fsS --retry 90 --retry-delay 2 --retry-connrefused -o /dev/null "$base/apis/ccompat/v7/subjects"
rules=$(curl -fsS "$base/apis/registry/v3/admin/rules")
case "$rules" in
  *'"VALIDITY"'*) echo "registry-init: VALIDITY rule present" ;;
  *)
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
      -d '{"ruleType":"VALIDITY","config":"FULL"}' "$base/apis/registry/v3/admin/rules")
    case "$code" in 204|409) ;; *) echo "registry-init: VALIDITY rule failed: HTTP $code" >&2; exit 1 ;; esac
    ;;
esac
case "$rules" in
  *'"COMPATIBILITY"'*) echo "registry-init: COMPATIBILITY rule present" ;;
  *)
    curl -fsS -X PUT -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
      -d "{\"compatibility\":\"${REGISTRY_COMPATIBILITY:-BACKWARD}\"}" "$base/apis/ccompat/v7/config"
    echo
    ;;
esac
