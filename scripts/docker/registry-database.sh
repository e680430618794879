#!/bin/sh
# docker-compose.kafka.yml: create the schema registry's database on the postgres service
# unless it exists; Apicurio creates its tables in it on first start.
set -eu
db="${REGISTRY_DB:-registry}"
if [ "$(psql -X -Atq -c "select 1 from pg_database where datname = '$db'")" != 1 ]; then
  psql -X -q -v ON_ERROR_STOP=1 -c "create database \"$db\" owner platform"
  echo "registry-database: created $db"
else
  echo "registry-database: $db exists"
fi
