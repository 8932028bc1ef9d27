// Package testenv decides what a test does when something it needs from
// the host is missing. Run by hand, the test is skipped with the reason.
// Run by scripts/test.sh (MVM_TEST_STRICT=1), which installs every
// prerequisite first, the test fails instead: in CI nothing skips, so a
// missing tool cannot hide a regression.
package testenv

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// StrictEnv is set to 1 by scripts/test.sh.
const StrictEnv = "MVM_TEST_STRICT"

// Strict reports whether missing prerequisites fail tests.
func Strict() bool { return os.Getenv(StrictEnv) == "1" }

// Missing skips t (by hand) or fails it (under scripts/test.sh) because a
// prerequisite is missing.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Strict() {
		t.Fatalf("%s (%s=1: scripts/test.sh must install it)", msg, StrictEnv)
	}
	t.Skip(msg)
}

// NeedTools calls Missing for the first tool not on PATH.
func NeedTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Missing(t, "%s is not installed", tool)
		}
	}
}

// NeedStaticBinary calls Missing unless path is a static executable (such
// as Debian's busybox-static at /bin/busybox).
func NeedStaticBinary(t testing.TB, path, pkg string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		Missing(t, "%s: %v (apt-get install %s)", path, err, pkg)
		return
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			Missing(t, "%s is dynamically linked (apt-get install %s)", path, pkg)
		}
	}
}

// NeedRoot calls Missing unless the test runs as root.
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root: %s", why)
	}
}

// Opted reports whether an expensive test class is enabled: by its own
// variable (MVM_TEST_FETCH=1, MVM_TEST_BOOT=1) or by strict mode. When
// neither is set the test is skipped with a note saying how to run it.
func Opted(t testing.TB, env, what string) {
	t.Helper()
	if os.Getenv(env) == "1" || Strict() {
		return
	}
	t.Skipf("%s: set %s=1 (scripts/test.sh runs it)", what, env)
}

// LimitFileSize makes this process's writes past n bytes of a file fail
// with EFBIG (a disk that fills up half-way through a write) until the
// returned func restores the old limit. Go ignores SIGXFSZ, so the write
// returns the error. Not for parallel tests: the limit is per process.
func LimitFileSize(t testing.TB, n uint64) (restore func()) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	restore = func() { syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old) }
	t.Cleanup(restore)
	return restore
}

// Poll calls cond every interval until it returns true, and reports
// whether it did before timeout passed. It returns as soon as cond holds:
// waiting is on the condition, never a fixed sleep.
func Poll(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
	return true
}

// Eventually polls cond every interval until it returns true; when timeout
// passes first it fails t (Fatalf) with "timed out after TIMEOUT waiting
// for " and msg(), called only then so that it can show the last state (a
// screen, a log). Msg makes a fixed message.
func Eventually(t testing.TB, timeout, interval time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	if !Poll(timeout, interval, cond) {
		t.Fatalf("timed out after %s waiting for %s", timeout, msg())
	}
}

// Msg is a fixed message for Eventually.
func Msg(format string, args ...any) func() string {
	s := fmt.Sprintf(format, args...)
	return func() string { return s }
}
