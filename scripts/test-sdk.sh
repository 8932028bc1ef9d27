#!/usr/bin/env bash
# The SDK suites: Python (mypy --strict + pytest) and TypeScript (tsc +
# node:test + npm pack), both against real microVMs driven through this
# repository's own mvmctl. Run by scripts/test.sh; runnable alone.
#
# Installs its own tools idempotently:
#   - a Python venv with pytest and mypy under $MVM_SDK_TOOLS_DIR
#     (default ~/.cache/mvm-sdk-tools), plus `pip install ./sdk/python`;
#   - typescript and @types/node in sdk/typescript/node_modules (npm ci).
# Uses bin/mvmctl (built with `make build` when missing) unless MVM_CLI_BIN
# is set. Sandboxes live in temp MVM_STATE_DIR / MVM_DATA_DIR; the shared
# cache (kernel, templates) is kept. Suites run one after the other and each
# runs its tests serially: this box has 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

say() { printf '== sdk: %s\n' "$*"; }

# -- mvmctl ------------------------------------------------------------------
if [ -z "${MVM_CLI_BIN:-}" ]; then
  if [ ! -x bin/mvmctl ] || [ ! -x bin/mvm-agent ]; then
    say "building mvmctl (make build)"
    make build
  fi
  export MVM_CLI_BIN="$ROOT/bin/mvmctl"
fi
[ -x "$MVM_CLI_BIN" ] || { echo "MVM_CLI_BIN=$MVM_CLI_BIN is not executable" >&2; exit 1; }

# -- temp state, shared cache --------------------------------------------------
# Short paths: unix sockets live under the state dir.
STATE=$(mktemp -d /tmp/mvs-sdk.XXXXXX)
DATA=$(mktemp -d /tmp/mvd-sdk.XXXXXX)
export MVM_STATE_DIR=$STATE MVM_DATA_DIR=$DATA
unset MVM_SDK_MODE MVM_SDK_OUT_PATH
cleanup() {
  # Whatever a failed test left running in this state dir goes down.
  timeout 120 "$MVM_CLI_BIN" down --all >/dev/null 2>&1 || true
  rm -rf "$STATE" "$DATA"
}
trap cleanup EXIT

TOOLS=${MVM_SDK_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mvm-sdk-tools}
mkdir -p "$TOOLS"

# -- Python ------------------------------------------------------------------
VENV=$TOOLS/venv
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import pytest, mypy' >/dev/null 2>&1; then
  say "installing pytest and mypy into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'pytest>=7' 'mypy>=1.5'
fi
say "pip install ./sdk/python"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./sdk/python
rm -rf sdk/python/build sdk/python/src/mvm.egg-info   # setuptools' in-tree leftovers
"$VENV/bin/python" -c 'import mvm, sys; assert mvm.__file__.startswith(sys.prefix), mvm.__file__'

say "mypy --strict (sdk/python)"
(cd sdk/python && "$VENV/bin/python" -m mypy --strict --no-error-summary --cache-dir "$TOOLS/mypy-cache" src/mvm tests && echo "mypy: no issues")

say "pytest (sdk/python)"
start=$(date +%s)
PYLOG=$(mktemp)
(cd sdk/python && timeout 1800 "$VENV/bin/python" -m pytest -p no:cacheprovider -q --durations=5 tests) | tee "$PYLOG"
say "python suite took $(( $(date +%s) - start ))s"

# -- TypeScript --------------------------------------------------------------
command -v node >/dev/null || { echo "node (>= 20) is required for the TypeScript SDK" >&2; exit 1; }
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
  { echo "node >= 20 is required (have $(node --version))" >&2; exit 1; }
cd "$ROOT/sdk/typescript"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci (typescript, @types/node)"
  npm ci --no-audit --no-fund --loglevel=error
fi

say "npm test (sdk/typescript)"
start=$(date +%s)
TSLOG=$(mktemp)
timeout 1800 npm test --silent | tee "$TSLOG"
say "typescript suite took $(( $(date +%s) - start ))s"

say "npm pack"
PACK=$(mktemp -d)
npm pack --silent --pack-destination "$PACK" >/dev/null
tarball=$(ls "$PACK"/mvm-sdk-*.tgz)
members=$(tar -tzf "$tarball")
for f in package/dist/src/index.js package/dist/src/index.d.ts package/package.json; do
  grep -qx "$f" <<<"$members" || { echo "npm pack: $f missing from $tarball" >&2; exit 1; }
done
if grep -q 'dist/test/' <<<"$members"; then echo "npm pack: tests leaked into the package" >&2; exit 1; fi
rm -rf "$PACK"
echo "npm pack: ok ($(basename "$tarball"))"

py_pass=$(grep -Eo '[0-9]+ passed' "$PYLOG" | tail -1 | grep -Eo '[0-9]+' || echo 0)
py_skip=$(grep -Eo '[0-9]+ skipped' "$PYLOG" | tail -1 | grep -Eo '[0-9]+' || echo 0)
ts_pass=$(grep -E '^# pass [0-9]+' "$TSLOG" | tail -1 | grep -Eo '[0-9]+' || echo 0)
ts_skip=$(grep -E '^# skipped [0-9]+' "$TSLOG" | tail -1 | grep -Eo '[0-9]+' || echo 0)
rm -f "$PYLOG" "$TSLOG"
echo "sdk: $((py_pass + ts_pass)) passed, 0 failed, $((py_skip + ts_skip)) skipped"
