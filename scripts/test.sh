#!/usr/bin/env bash
# The whole test suite: static checks, unit tests (race detector on the
# packages that share state), end-to-end tests on real microVMs, and the
# SDK suites. Run through `make test`, which installs prerequisites first.
set -euo pipefail
cd "$(dirname "$0")/.."

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

for suite in scripts/test-*.sh; do
  [ -e "$suite" ] || continue
  echo "== $suite"
  bash "$suite"
done
