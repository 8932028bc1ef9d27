package e2e

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// jsonLines decodes each line of s as one JSON object.
func jsonLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		var o map[string]any
		if err := json.Unmarshal([]byte(line), &o); err != nil {
			t.Fatalf("not a JSON line: %q: %v", line, err)
		}
		out = append(out, o)
	}
	return out
}

// errorOf is the error object of a failed --json command.
func errorOf(t *testing.T, r result) map[string]any {
	t.Helper()
	objs := jsonLines(t, r.stdout)
	e, _ := objs[len(objs)-1]["error"].(map[string]any)
	if e == nil {
		t.Fatalf("no error object: %s", r)
	}
	return e
}

// TestLifecycleJSONAndErrorKinds drives one real sandbox through the --json
// outputs of wait, ls, pause, resume, logs, exec and down, and checks that
// guest failures reach the CLI with their kind (from the status details)
// and the exit code of the one table.
func TestLifecycleJSONAndErrorKinds(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pub := freePort(t)
	e.must("up", "--name", "js", "--allow", "example.com", "-p", pub+":8000")
	defer e.run("down", "js")

	if o := jsonLines(t, e.must("wait", "js", "--json").stdout); len(o) != 1 || o[0]["ready"] != true || o[0]["name"] != "js" {
		t.Errorf("wait --json: %v", o)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(e.must("ls", "--json").stdout), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("ls --json: %v", err)
	}
	ports, _ := rows[0]["ports"].([]any)
	if rows[0]["network"] != "allowlist" || len(ports) != 1 {
		t.Fatalf("ls --json network/ports: %v", rows[0])
	}
	if p := ports[0].(map[string]any); p["guest_port"] != float64(8000) || p["host_addr"] != "127.0.0.1" {
		t.Errorf("published port: %v", p)
	}
	if o := jsonLines(t, e.must("pause", "js", "--json").stdout); o[0]["state"] != "paused" {
		t.Errorf("pause --json: %v", o)
	}
	if o := jsonLines(t, e.must("resume", "js", "--json").stdout); o[0]["state"] != "running" {
		t.Errorf("resume --json: %v", o)
	}
	for _, o := range jsonLines(t, e.must("logs", "js", "--json", "-n", "5").stdout) {
		if _, ok := o["line"].(string); !ok || len(o) != 1 {
			t.Errorf("logs --json line: %v", o)
		}
	}

	// exec --json names the run's signed receipt.
	var res map[string]any
	json.Unmarshal([]byte(e.must("exec", "--json", "js", "--", "true").stdout), &res)
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	if id, _ := res["receipt_id"].(string); !uuid.MatchString(id) {
		t.Errorf("exec --json receipt_id: %v", res)
	}

	// Guest failures, each with its kind, reason and exit code.
	e.must("fs", "write", "js", "/tmp/f", "--content", "not a program")
	for _, c := range []struct {
		args         []string
		code         int
		kind, reason string
	}{
		{[]string{"exec", "--json", "js", "--", "no-such-command"}, 127, "not_found", "command"},
		{[]string{"exec", "--json", "js", "--", "/tmp/f"}, 126, "permission_denied", "command"},
		{[]string{"fs", "ls", "js", "/tmp/f", "--json"}, 7, "failed_precondition", "not_dir"},
		{[]string{"fs", "stat", "js", "/no/such/file", "--json"}, 4, "not_found", "path"},
		{[]string{"proc", "ls", "nosuch", "--json"}, 3, "not_found", "sandbox"},
	} {
		r := e.run(c.args...)
		if r.code != c.code {
			t.Errorf("%v: want exit %d: %s", c.args, c.code, r)
			continue
		}
		if er := errorOf(t, r); er["kind"] != c.kind || er["reason"] != c.reason {
			t.Errorf("%v: error %v, want %s/%s", c.args, er, c.kind, c.reason)
		}
	}
	// A process without stdin: a failed precondition (exit 1), not a
	// policy refusal (126) as every FailedPrecondition used to be.
	start := e.must("proc", "start", "js", "--json", "--", "sleep", "30")
	var info map[string]any
	json.Unmarshal([]byte(start.stdout), &info)
	h, _ := info["handle"].(string)
	if r := e.run("proc", "stdin", "js", h, "--content", "x"); r.code != 1 || !strings.Contains(r.stderr, "no open stdin") {
		t.Errorf("proc stdin without stdin: %s", r)
	}

	d := jsonLines(t, e.must("down", "js", "--json").stdout)
	if len(d) != 1 || d[0]["removed"] != true || d[0]["sandbox"] != "js" {
		t.Errorf("down --json: %v", d)
	}
	e.assertClean()
}
