#!/usr/bin/env bash
# The whole test suite: static checks, unit tests (race detector on the
# packages that share state), end-to-end tests on real microVMs, and the
# SDK suites. Run through `make test`, which installs prerequisites first.
set -euo pipefail
cd "$(dirname "$0")/.."

# Test-only tools, installed here so that no test skips for want of them
# (MVM_TEST_STRICT=1 below turns such a skip into a failure):
#   tmux              console tests drive a real terminal
#   e2fsprogs         rootfs tests pack and inspect ext4 images (mkfs.ext4, debugfs, e2fsck)
#   busybox-static    the minimal template and the initramfs tests
#   mmdebstrap        Debian template builds
#   qemu-system-x86   the initramfs smoke boot (MVM_TEST_BOOT)
#   apt-utils, dpkg   the kernel fetch test (MVM_TEST_FETCH)
#   containerd        the shim's tests (containerd, ctr); they start their own
#                     containerd, so the package's service is not left running
need_pkgs=()
command -v tmux >/dev/null 2>&1 || need_pkgs+=(tmux)
command -v mkfs.ext4 >/dev/null 2>&1 && command -v debugfs >/dev/null 2>&1 || need_pkgs+=(e2fsprogs)
{ [ -x /bin/busybox ] && ! LC_ALL=C file -L /bin/busybox 2>/dev/null | grep -q dynamically; } || need_pkgs+=(busybox-static)
command -v mmdebstrap >/dev/null 2>&1 || need_pkgs+=(mmdebstrap)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_pkgs+=(qemu-system-x86)
command -v containerd >/dev/null || need_pkgs+=(containerd)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing test prerequisites: ${need_pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >/dev/null || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >/dev/null; }
    if [[ " ${need_pkgs[*]} " == *" containerd "* ]] && [ -d /run/systemd/system ]; then
      systemctl disable --now containerd.service >/dev/null 2>&1 || true
    fi
  else
    echo "missing test prerequisites and this is not root: run apt-get install -y ${need_pkgs[*]}" >&2
    exit 1
  fi
fi
# Nothing skips for a missing tool, and the opt-in classes run: the real
# kernel download (MVM_TEST_FETCH) and the initramfs smoke boot
# (MVM_TEST_BOOT).
export MVM_TEST_STRICT=1 MVM_TEST_FETCH=1 MVM_TEST_BOOT=1

# The TypeScript SDK's toolchain (tsc, @types/node): the SDK suite and the
# declaration end-to-end tests (which compile a TypeScript workload) use it.
if [ ! -f sdk/typescript/node_modules/.package-lock.json ] || [ sdk/typescript/package-lock.json -nt sdk/typescript/node_modules/.package-lock.json ]; then
  echo "== npm ci (sdk/typescript)"
  (cd sdk/typescript && npm ci --no-audit --no-fund --loglevel=error)
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

echo "== containerd shim tests (a private containerd, real microVMs)"
go test -count=1 -timeout 20m ./tests/shim/

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
