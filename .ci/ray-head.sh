#!/usr/bin/env bash
# Start (or stop) a one-node Ray head with its job server on loopback for the tests marked ray_head.
#   .ci/ray-head.sh start DIR   -> prints the export lines for TUNEFLEET_TEST_RAY_ADDRESS and
#                                  Ray's token authentication (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH)
#   .ci/ray-head.sh stop DIR
# DIR holds the token, Ray's session files and the head's log. Token authentication is on, as it
# must be on any cluster that `tunefleet job submit` targets. Jobs run `tunefleet` from this
# checkout's .venv, which is put first on the head's PATH; their kernel cache and cost models go
# under DIR/home, so a test run leaves nothing in the real home folder.
set -euo pipefail
action=${1:?start|stop}
dir=${2:?directory}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
gcs_port=${TUNEFLEET_CI_RAY_PORT:-56390}
dashboard_port=${TUNEFLEET_CI_RAY_DASHBOARD_PORT:-58265}
address="http://127.0.0.1:$dashboard_port"

case "$action" in
start)
  mkdir -p "$dir"
  (umask 077 && "$root/.venv/bin/python" -c 'import secrets; print(secrets.token_hex(32))' >"$dir/token")
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$dir/token"
  # --block keeps `ray start` as the leader of its own process group: stop signals that group
  mkdir -p "$dir/home"
  HOME="$dir/home" PATH="$root/.venv/bin:$PATH" setsid "$root/.venv/bin/ray" start --head --block \
    --port="$gcs_port" --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" \
    --num-cpus=4 --num-gpus=0 --temp-dir="$dir/ray" --disable-usage-stats \
    >"$dir/head.log" 2>&1 </dev/null &
  echo $! >"$dir/head.pid"
  ready=0
  for _ in $(seq 90); do  # the job server answers within a few seconds; give up after ~90 s
    if "$root/.venv/bin/python" -c "from ray.job_submission import JobSubmissionClient as C; C('$address')" >/dev/null 2>&1; then
      ready=1 && break
    fi
    sleep 1
  done
  if [ "$ready" != 1 ]; then
    echo "the Ray head did not start; its log:" >&2 && tail -n 30 "$dir/head.log" >&2
    exit 1
  fi
  echo "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH='$dir/token'"
  echo "export TUNEFLEET_TEST_RAY_ADDRESS='$address'"
  ;;
stop)
  [ -f "$dir/head.pid" ] || exit 0
  pgid=$(cat "$dir/head.pid")
  kill -TERM -- "-$pgid" 2>/dev/null || exit 0
  for _ in $(seq 20); do kill -0 -- "-$pgid" 2>/dev/null || exit 0; sleep 0.5; done
  kill -KILL -- "-$pgid" 2>/dev/null || true
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2 && exit 2
  ;;
esac
