package cli

import (
	"strings"
	"syscall"
	"testing"
)

func TestParseEnv(t *testing.T) {
	t.Setenv("MVM_TEST_FROM_HERE", "v1")
	env, err := parseEnv([]string{"A=1", "B=x=y", "C=", "MVM_TEST_FROM_HERE"})
	if err != nil || env["A"] != "1" || env["B"] != "x=y" || env["C"] != "" || env["MVM_TEST_FROM_HERE"] != "v1" || len(env) != 4 {
		t.Fatalf("%v %v", env, err)
	}
	_, err = parseEnv([]string{"MVM_TEST_SURELY_UNSET_XYZ"})
	if exitFor(err) != ExitUsage || !strings.Contains(err.Error(), "KEY=VALUE") {
		t.Errorf("unset name: %v (exit %d)", err, exitFor(err))
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"512M": 512, "1G": 1024, "256": 256} {
		if got, err := parseSize("memory", in); err != nil || got != want {
			t.Errorf("%s: %d %v", in, got, err)
		}
	}
	// The message names the flag that was wrong (--disk said --memory).
	_, err := parseSize("disk", "lots")
	if exitFor(err) != ExitUsage || !strings.Contains(err.Error(), "--disk") {
		t.Errorf("bad size: %v (exit %d)", err, exitFor(err))
	}
}

func TestParseMode(t *testing.T) {
	if m, err := parseMode("0755"); err != nil || m != 0o755 {
		t.Errorf("0755: %o %v", m, err)
	}
	for _, bad := range []string{"999", "rwx", "077777", ""} {
		if _, err := parseMode(bad); exitFor(err) != ExitUsage {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]int{"TERM": 15, "sigkill": 9, "SIGINT": 2, "hup": 1, "15": 15} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("%s: %d %v", in, got, err)
		}
	}
	for _, bad := range []string{"0", "65", "NOPE", ""} {
		if _, err := parseSignal(bad); exitFor(err) != ExitUsage {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestSignalExit(t *testing.T) {
	if signalExit(syscall.SIGTERM) != ExitTerminated || signalExit(syscall.SIGINT) != ExitInterrupt {
		t.Error("signal exit codes")
	}
}

// TestUsageErrorsExitTwo: flag values the CLI checks itself.
func TestUsageErrorsExitTwo(t *testing.T) {
	for _, args := range [][]string{
		{"up", "--memory", "lots"},
		{"up", "--disk", "x"},
		{"up", "--cpus", "100"},
		{"up", "--ttl", "-1s"},
		{"up", "--name", "Bad Name"},
		{"up", "-e", "MVM_TEST_SURELY_UNSET_XYZ"},
		{"up", "dir", "--image", "python"},
		{"run", "--timeout", "-1s", "--", "true"},
		{"run", "--cpus", "0", "--", "true"},
		{"down"},
		{"exec", "only-a-name"},
		{"wait"},
		{"fs", "write", "box", "/x", "--mode", "rwx"},
	} {
		app, _, errb := testApp(t)
		if code := run(app, args); code != ExitUsage {
			t.Errorf("mvmctl %s: exit %d, want 2 (stderr %q)", strings.Join(args, " "), code, errb)
		}
	}
}
