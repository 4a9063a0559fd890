#!/usr/bin/env bash
# Start (or stop) a throwaway PostgreSQL and Redis on loopback for the tests.
#   .ci/services.sh start DIR   -> prints the export lines for TUNEFLEET_TEST_POSTGRES_URL / _REDIS_URL
#   .ci/services.sh stop DIR
# DIR holds the data, the logs and the password; nothing outside it is touched.
set -euo pipefail
action=${1:?start|stop}
dir=${2:?directory}
pg_port=${TUNEFLEET_CI_PG_PORT:-55432}
redis_port=${TUNEFLEET_CI_REDIS_PORT:-56379}
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "$action" in
start)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  password=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  echo "$password" > "$dir/pgpass"
  chmod 600 "$dir/pgpass"
  [ "$(id -u)" = 0 ] && chown postgres "$dir/pgpass"
  as_postgres "$pgbin/initdb" -D "$dir/pg" -U tunefleet --pwfile="$dir/pgpass" -A scram-sha-256 >"$dir/initdb.log"
  as_postgres "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w \
    -o "-h 127.0.0.1 -p $pg_port -k $dir -c fsync=off -c max_connections=200" start >/dev/null
  PGPASSWORD=$password "$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U tunefleet -d postgres -qc \
    "CREATE DATABASE tunefleet_test" >/dev/null
  redis-server --bind 127.0.0.1 --port "$redis_port" --daemonize yes --save '' --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "export TUNEFLEET_TEST_POSTGRES_URL=postgresql+psycopg://tunefleet:$password@127.0.0.1:$pg_port/tunefleet_test"
  echo "export TUNEFLEET_TEST_REDIS_URL=redis://127.0.0.1:$redis_port/0"
  ;;
stop)
  as_postgres "$pgbin/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null 2>&1 || true
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
