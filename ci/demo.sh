#!/usr/bin/env bash
# Install what is missing, build fastproxy in place, and run it on examples/bootstrap.yaml in
# front of a demo upstream (127.0.0.1:8080). Ctrl-C stops both.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash ci/setup.sh
# shellcheck disable=SC1091
. build/ci/env.sh
PY="$FASTPROXY_PYTHON"

echo "==> building the compiled core in place" >&2
"$PY" setup.py -q build_ext --inplace

UPSTREAM_PORT="${DEMO_UPSTREAM_PORT:-8080}"
"$PY" -m fastproxy.demo_upstream --port "$UPSTREAM_PORT" &
UPSTREAM_PID=$!
# fastproxy runs in the foreground (not exec'd) so that this trap can stop the upstream.
stop_upstream() { kill "$UPSTREAM_PID" 2>/dev/null || true; }
trap stop_upstream EXIT
trap 'exit 130' INT TERM

for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$UPSTREAM_PORT") 2>/dev/null && break
    sleep 0.1
done

cat <<MSG

fastproxy is starting on 127.0.0.1:10000 (admin on 127.0.0.1:9901). In another terminal try:

    curl -v http://127.0.0.1:10000/
    curl -v http://127.0.0.1:10000/api/hello
    curl http://127.0.0.1:9901/stats

Press Ctrl-C to stop.

MSG
"$PY" -m fastproxy -c examples/bootstrap.yaml
