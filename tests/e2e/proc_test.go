package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// testProc runs against the sandbox booted by TestGuestRPC.
func testProc(t *testing.T, e0 *env) {
	e := *e0
	e.t = t
	// A late wait still gets the output from the start, and the exit code.
	h := strings.TrimSpace(e.must("proc", "start", "rpc", "-e", "WHO=late", "-w", "/tmp", "--",
		"sh", "-c", "echo $WHO in $(pwd); echo warn >&2; exit 7").stdout)
	if h == "" {
		t.Fatal("no handle printed")
	}
	waitProc(t, &e, h, "to exit before it is waited for", func(p map[string]any) bool { return p["state"] == "exited" })
	r := e.expect(7, "proc", "wait", "rpc", h)
	if r.stdout != "late in /tmp\n" || r.stderr != "warn\n" {
		t.Errorf("late wait: %s", r)
	}
	// Waiting again works too (exited processes are kept).
	if r := e.expect(7, "proc", "wait", "rpc", h); r.stdout != "late in /tmp\n" {
		t.Errorf("second wait: %s", r)
	}
	var ls []map[string]any
	json.Unmarshal([]byte(e.must("proc", "ls", "rpc", "--json").stdout), &ls)
	if len(ls) == 0 || ls[0]["handle"] != h || ls[0]["state"] != "exited" || ls[0]["exit_code"] != float64(7) {
		t.Errorf("proc ls: %v", ls)
	}
	// A process that writes far faster (and more) than its reader: memory
	// stays bounded, the reader is told how much it lost, the tail is there.
	fast := strings.TrimSpace(e.must("proc", "start", "rpc", "--", "sh", "-c",
		"head -c 20000000 /dev/zero | tr '\\0' x; echo; echo TAIL").stdout)
	waitProc(t, &e, fast, "to write everything before it is read", func(p map[string]any) bool { return p["state"] == "exited" })
	r = e.must("proc", "wait", "rpc", fast)
	lost := 0
	for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		var n int
		if _, err := fmt.Sscanf(l, "mvmctl: %d bytes of stdout were dropped", &n); err != nil {
			t.Errorf("unexpected stderr line %q", l)
		}
		lost += n
	}
	if lost == 0 || lost+len(r.stdout) != 20000006 || !strings.HasSuffix(r.stdout, "x\nTAIL\n") {
		t.Errorf("fast writer: got %d + dropped %d bytes, want 20000006; tail %q", len(r.stdout), lost, r.stdout[max(0, len(r.stdout)-10):])
	}
	t.Logf("fast writer: reader got %d bytes, %d were reported dropped", len(r.stdout), lost)
	json.Unmarshal([]byte(e.must("proc", "ls", "rpc", "--json").stdout), &ls)
	for _, p := range ls {
		if p["handle"] == fast && (p["stdout_bytes"] != float64(20000006) || p["stdout_dropped"].(float64) < 19000000) {
			t.Errorf("fast writer accounting: %v", p)
		}
	}
	// stdin, signal, kill.
	cat := strings.TrimSpace(e.must("proc", "start", "rpc", "-i", "--", "cat").stdout)
	e.must("proc", "stdin", "rpc", cat, "--content", "one\n")
	if r := e.runIn(strings.NewReader("two\n"), "proc", "stdin", "rpc", cat, "--close"); r.code != 0 {
		t.Errorf("stdin from stdin: %s", r)
	}
	if r := e.must("proc", "wait", "rpc", cat); r.stdout != "one\ntwo\n" {
		t.Errorf("cat: %s", r)
	}
	e.expect(1, "proc", "stdin", "rpc", cat, "--content", "late")
	sl := strings.TrimSpace(e.must("proc", "start", "rpc", "--", "sh", "-c", "trap 'echo got TERM; exit 3' TERM; echo trapped; while :; do sleep 0.1; done").stdout)
	waitProc(t, &e, sl, "to install its TERM trap", func(p map[string]any) bool { n, _ := p["stdout_bytes"].(float64); return n > 0 })
	e.must("proc", "signal", "rpc", sl, "TERM")
	if r := e.expect(3, "proc", "wait", "rpc", sl); r.stdout != "trapped\ngot TERM\n" {
		t.Errorf("signal: %s", r)
	}
	k := strings.TrimSpace(e.must("proc", "start", "rpc", "--", "sleep", "600").stdout)
	r = e.run("proc", "wait", "rpc", k, "--no-follow")
	if r.code != 0 || !strings.Contains(r.stderr, "still running") {
		t.Errorf("no-follow: %s", r)
	}
	e.must("proc", "kill", "rpc", k)
	e.expect(137, "proc", "wait", "rpc", k)
	if js := e.must("proc", "start", "rpc", "--json", "--", "true").stdout; !strings.Contains(js, `"audit_id":"`) {
		t.Errorf("proc start --json has no audit id: %s", js)
	}
	// Errors: unknown handle, unknown signal, command not found.
	e.expect(4, "proc", "wait", "rpc", "p9999")
	e.expect(4, "proc", "kill", "rpc", "p9999")
	e.expect(2, "proc", "signal", "rpc", k, "NOPE")
	e.expect(127, "proc", "start", "rpc", "--", "no-such-command")
	e.expect(3, "proc", "ls", "nosuch")
}

// waitProc polls `proc ls --json` until the process with handle h meets
// cond (the condition itself, not a sleep).
func waitProc(t *testing.T, e *env, h, what string, cond func(map[string]any) bool) {
	t.Helper()
	waitFor(t, "process "+h+" "+what, time.Minute, func() bool {
		var ls []map[string]any
		json.Unmarshal([]byte(e.must("proc", "ls", "rpc", "--json").stdout), &ls)
		for _, p := range ls {
			if p["handle"] == h {
				return cond(p)
			}
		}
		return false
	})
}
