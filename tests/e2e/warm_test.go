package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// poolLs returns `pool ls --json`.
func (e *env) poolLs() []map[string]any {
	e.t.Helper()
	r := e.must("pool", "ls", "--json")
	var rows []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		e.t.Fatalf("pool ls --json: %v: %s", err, r)
	}
	return rows
}

func countOf(v any) int {
	l, _ := v.([]any)
	return len(l)
}

// A warm pool: set 2, claim one with up (the caller's name, plan and a
// fresh hostname), exec in it, a replacement appears, run takes one too,
// and set 0 leaves nothing: no VMM, no supervisor, no state.
func TestWarmPool(t *testing.T) {
	e := newEnv(t)
	r := e.must("pool", "set", "minimal", "2", "--json")
	var ps map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &ps); err != nil || countOf(ps["ready"]) != 2 {
		t.Fatalf("pool set: %v %s", err, r)
	}
	// Pooled members are listed only with -a, in the pooled state.
	if out := e.must("ls", "--json").stdout; strings.TrimSpace(out) != "[]" {
		t.Fatalf("ls without -a lists pool members: %s", out)
	}
	pooled := 0
	var member string
	for _, sb := range e.sandboxes() {
		if sb["state"] == "pooled" {
			pooled++
			member = sb["name"].(string)
		}
	}
	if pooled != 2 {
		t.Fatalf("ls -a: %d pooled, want 2: %v", pooled, e.sandboxes())
	}
	// Nothing runs in a member before it is claimed.
	if r := e.run("exec", member, "--", "true"); r.code == 0 {
		t.Fatalf("exec in an unclaimed pool member: %s", r)
	}

	up := e.must("up", "--name", "mine", "--json", "-e", "GREETING=hi")
	var st map[string]any
	json.Unmarshal([]byte(up.stdout), &st)
	if st["name"] != "mine" || st["state"] != "running" {
		t.Fatalf("claimed sandbox: %s", up)
	}
	out := e.must("exec", "mine", "--", "sh", "-c", `echo "$GREETING"`).stdout
	if strings.TrimSpace(out) != "hi" {
		t.Fatalf("claimed sandbox answered %q, want the caller's env", out)
	}
	var br map[string]any
	json.Unmarshal([]byte(e.must("boot-report", "mine", "--json").stdout), &br)
	boot, _ := br["boot"].(map[string]any)
	if boot["pool"] != ps["id"] {
		t.Fatalf("boot-report does not name the pool: %v", br)
	}
	// The claimer's plan was admitted: its audit chain has the claim.
	if r := e.must("audit", "verify"); r.code != 0 {
		t.Fatalf("audit verify: %s", r)
	}

	// The taker started a replacement in the background.
	waitFor(t, "the pool to be refilled", 3*time.Minute, func() bool {
		rows := e.poolLs()
		return len(rows) == 1 && countOf(rows[0]["ready"]) == 2
	})

	// run takes a member too, and its sandbox goes when the run ends.
	if r := e.must("run", "--json", "--", "true"); !strings.Contains(r.stdout, `"exit_code": 0`) && !strings.Contains(r.stdout, `"exit_code":0`) {
		t.Fatalf("run: %s", r)
	}
	waitFor(t, "the pool to be refilled after run", 3*time.Minute, func() bool {
		rows := e.poolLs()
		return len(rows) == 1 && countOf(rows[0]["ready"]) == 2
	})

	e.must("pool", "set", "minimal", "0")
	if rows := e.poolLs(); len(rows) != 0 {
		t.Fatalf("pool ls after set 0: %v", rows)
	}
	for _, sb := range e.sandboxes() {
		if sb["name"] != "mine" {
			t.Fatalf("left after pool set 0: %v", sb)
		}
	}
	e.must("down", "mine")
	e.assertClean()
	if ents, _ := os.ReadDir(filepath.Join(e.state, "pools")); len(ents) != 0 {
		t.Fatalf("pool files left: %v", ents)
	}
}
