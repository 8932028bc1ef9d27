#!/usr/bin/env bash
# The whole test suite: static checks, unit tests (race detector on the
# packages that share state), end-to-end tests on real microVMs, and the
# SDK suites. Run through `make test`, which installs prerequisites first.
set -euo pipefail
cd "$(dirname "$0")/.."

# Test-only tools: tmux drives the console tests through a real terminal.
if ! command -v tmux >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing tmux (console tests)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q tmux >/dev/null || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q tmux >/dev/null; }
  else
    echo "tmux is missing and this is not root: run apt-get install -y tmux (the console tests need it)" >&2
    exit 1
  fi
fi

echo "== gofmt / go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' | grep -v '\.pb\.go$') 2>/dev/null || true)
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi
go vet ./...

echo "== unit tests"
go test -count=1 -race $(go list ./internal/... | grep -v /agentapi/agentpb)

echo "== end-to-end tests (real microVMs; at most 2 at once on this 2-core box)"
go test -count=1 -parallel 2 -timeout 40m ./tests/e2e/

echo "== race pass: supervisors and CLI built with -race against real microVMs"
racedir=$(mktemp -d)
MVM_TEST_RACE=1 GORACE="log_path=$racedir/report" go test -count=1 -short -parallel 2 -timeout 20m \
  -run 'TestRunExitCodeAndStreams|TestConcurrentExecsOnOneSandbox|TestKilledRunLeavesNothing|TestGuestRPC|TestTTLExpiry|TestKilledVMMOrSupervisor|TestNetworkAllowlist' \
  ./tests/e2e/
if ls "$racedir"/report* >/dev/null 2>&1; then
  echo "data races reported by mvmctl or a supervisor:"; cat "$racedir"/report*; exit 1
fi
rm -rf "$racedir"

for suite in scripts/test-*.sh; do
  [ -e "$suite" ] || continue
  echo "== $suite"
  bash "$suite"
done
