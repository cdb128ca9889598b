#!/usr/bin/env bash
# Install what is missing (ci/setup.sh), build the compiled core in place, run the test suite.
# Extra arguments are passed to pytest (e.g. `bash ci/test.sh -k parity -x`).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash ci/setup.sh

# FASTPROXY_PYTHON and ENVOY_BIN, as found or installed by ci/setup.sh (an ENVOY_BIN set by
# the caller wins).
CALLER_ENVOY_BIN="${ENVOY_BIN:-}"
# shellcheck disable=SC1091
. build/ci/env.sh
ENVOY_BIN="${CALLER_ENVOY_BIN:-$ENVOY_BIN}"
export ENVOY_BIN
PY="$FASTPROXY_PYTHON"

echo "==> building the compiled core in place" >&2
"$PY" setup.py -q build_ext --inplace

echo "==> running the tests (envoy: $ENVOY_BIN)" >&2
rc=0
"$PY" -m pytest tests -q -ra --timeout=300 -p no:cacheprovider "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "==> FAILED: pytest collected no tests" >&2
    exit 1
fi
if [ "$rc" -ne 0 ]; then
    echo "==> FAILED: pytest exited with status $rc" >&2
fi
exit "$rc"
