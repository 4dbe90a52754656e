#!/usr/bin/env bash
# One script for a fresh machine: creates .venv, installs finsent, then runs a command inside a private
# network namespace (nothing may listen beyond loopback on the shared machines; Ray and the broker bind
# wildcards otherwise).
#
#   bash scripts/dev.sh demo [finsent demo options]   # the whole pipeline on the embedded default
#   bash scripts/dev.sh test [pytest options]         # ruff + the full test suite (what CI runs)
#   bash scripts/dev.sh finsent <command> ...         # any finsent command, same environment
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="${FINSENT_VENV:-$root/.venv}"
py="${PYTHON:-python3}"

# $1: the extras to install: dev (tests, ruff, the broker) or broker (the demo needs only the broker)
install() {
  local extras="$1" stamp="$venv/.finsent-installed" want have
  want=$(sha256sum pyproject.toml | cut -c1-16)
  have=$(cat "$stamp" 2>/dev/null || true)
  # the stamp holds "<pyproject hash> <extras>" ("<hash>" alone: written before extras were recorded = dev)
  if [ "$have" = "$want $extras" ] || [ "$have" = "$want dev" ] || [ "$have" = "$want" ]; then
    return
  fi
  echo "[dev.sh] creating $venv and installing finsent[$extras] (first run: about 1-1.5 minutes)" >&2
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  # torch first and pinned: 2.13.0 is a local CPU wheel here; anything unpinned pulls GBs of CUDA
  "$venv/bin/python" -m pip install -q "torch==2.13.0"
  "$venv/bin/python" -m pip install -q -e ".[$extras]"
  echo "$want $extras" >"$stamp"
}

# Run "$@" in a private network namespace with loopback up, when this machine allows it (root + unshare);
# elsewhere (a laptop, a container without CAP_SYS_ADMIN) run it directly: servers bind 127.0.0.1 anyway.
isolated() {
  export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
  # a short temp dir owned by this run: Ray puts Unix sockets under $TMPDIR (107-byte path limit) and leaves
  # pymp-* folders behind
  local tmp
  tmp="${FINSENT_TMPDIR:-$(mktemp -d /tmp/finsent-XXXXXX)}"
  mkdir -p "$tmp"
  export TMPDIR="$tmp"
  local rc=0
  if [ "${FINSENT_NO_NETNS:-0}" != 1 ] && command -v unshare >/dev/null && unshare -n true 2>/dev/null; then
    unshare -n sh -c 'ip link set lo up 2>/dev/null || ifconfig lo up; exec "$@"' sh "$@" || rc=$?
  else
    "$@" || rc=$?
  fi
  [ -n "${FINSENT_TMPDIR:-}" ] || rm -rf "$tmp"
  return "$rc"
}

cmd="${1:-test}"
shift || true
if [ "$cmd" = demo ]; then install broker; else install dev; fi
case "$cmd" in
  test)
    "$venv/bin/ruff" check .
    isolated "$venv/bin/python" -m pytest -q -rs --durations=15 "$@"
    ;;
  demo)
    isolated "$venv/bin/finsent" demo "$@"
    ;;
  finsent)
    isolated "$venv/bin/finsent" "$@"
    ;;
  *)
    echo "usage: bash scripts/dev.sh {demo|test|finsent} [args...]" >&2
    exit 2
    ;;
esac
