package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// privateCache gives the test its own cache directory, so that it sees
// ready snapshots appear and go: the kernel and images are the shared
// cache's (symlinked).
func (e *env) privateCache() string {
	e.t.Helper()
	shared := os.Getenv("MVM_CACHE_DIR")
	if shared == "" {
		home, _ := os.UserHomeDir()
		shared = filepath.Join(home, ".cache", "mvm")
		if x := os.Getenv("XDG_CACHE_HOME"); x != "" {
			shared = filepath.Join(x, "mvm")
		}
	}
	c := filepath.Join(e.t.TempDir(), "cache")
	if err := os.MkdirAll(c, 0o700); err != nil {
		e.t.Fatal(err)
	}
	for _, d := range []string{"kernel", "images"} {
		if err := os.Symlink(filepath.Join(shared, d), filepath.Join(c, d)); err != nil {
			e.t.Fatal(err)
		}
	}
	e.extra = append(e.extra, "MVM_CACHE_DIR="+c)
	return filepath.Join(c, "ready")
}

// bootOf returns boot-report NAME --json's "boot".
func (e *env) bootOf(name string) map[string]any {
	e.t.Helper()
	var br map[string]any
	if err := json.Unmarshal([]byte(e.must("boot-report", name, "--json").stdout), &br); err != nil {
		e.t.Fatal(err)
	}
	boot, _ := br["boot"].(map[string]any)
	return boot
}

func (e *env) wantStart(name, start, reason string) map[string]any {
	e.t.Helper()
	b := e.bootOf(name)
	if b["start"] != start || !strings.Contains(fmt.Sprint(b["start_reason"]), reason) {
		e.t.Fatalf("%s: start %v (%v), want %s (%s)", name, b["start"], b["start_reason"], start, reason)
	}
	return b
}

// readyTags lists the ready snapshots with a record.
func readyTags(t *testing.T, dir string) []string {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var tags []string
	for _, e := range ents {
		if tag, ok := strings.CutSuffix(e.Name(), ".ready.json"); ok {
			tags = append(tags, tag)
		}
	}
	return tags
}

// Warm start by default: the first boot of an image records its ready
// snapshot, later sandboxes (up and run) restore from it with their own
// identity, --cold boots, and a stale, tampered or half-made snapshot is
// replaced, never used. Two first boots at once publish one snapshot.
func TestWarmStart(t *testing.T) {
	e := newEnv(t)
	ready := e.privateCache()

	e.must("up", "--name", "a")
	e.wantStart("a", "cold", "no ready snapshot yet")
	tags := readyTags(t, ready)
	if len(tags) != 1 {
		t.Fatalf("ready snapshots after the first boot: %v", tags)
	}
	tag := tags[0]
	for _, f := range []string{tag + ".ready.json", filepath.Join(tag, "memory.state"), filepath.Join(tag, "meta.json")} {
		if fi, err := os.Stat(filepath.Join(ready, f)); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Fatalf("%s: %v %v", f, fi, err)
		}
	}

	e.must("up", "--name", "b")
	b := e.wantStart("b", "restored", "")
	if b["snapshot"] != tag {
		t.Fatalf("b restored from %v, want %s", b["snapshot"], tag)
	}
	// Its own identity, and a working guest.
	if out := e.must("exec", "b", "--", "sh", "-c", "hostname; echo x > /tmp/f; cat /tmp/f").stdout; out != "b\nx\n" {
		t.Fatalf("restored sandbox answered %q", out)
	}
	ua := e.must("exec", "a", "--", "cat", "/proc/sys/kernel/random/uuid").stdout
	ub := e.must("exec", "b", "--", "cat", "/proc/sys/kernel/random/uuid").stdout
	if ua == ub {
		t.Fatalf("two sandboxes gave the same random uuid %q", ua)
	}

	e.must("up", "--name", "c", "--cold")
	e.wantStart("c", "cold", "cold start requested")

	r := e.must("run", "--json", "--", "echo", "hi")
	if !strings.Contains(r.stdout, `"start": "restored"`) && !strings.Contains(r.stdout, `"start":"restored"`) {
		t.Fatalf("run did not restore: %s", r)
	}
	e.must("down", "a", "b", "c")

	// Stale: the record names another kernel. Replaced by the next boot.
	recPath := filepath.Join(ready, tag+".ready.json")
	rec, _ := os.ReadFile(recPath)
	var k map[string]any
	json.Unmarshal(rec, &k)
	k["key"].(map[string]any)["kernel_digest"] = "sha256:" + strings.Repeat("0", 64)
	stale, _ := json.Marshal(k)
	os.WriteFile(recPath, stale, 0o600)
	e.must("up", "--name", "d")
	e.wantStart("d", "cold", "stale: kernel changed")
	e.must("up", "--name", "e")
	e.wantStart("e", "restored", "")
	e.must("down", "d", "e")

	// Tampered memory: refused (never restored), replaced.
	mem := filepath.Join(ready, tag, "memory.state")
	f, err := os.OpenFile(mem, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("tampered"), 4096)
	f.Close()
	e.must("up", "--name", "g")
	e.wantStart("g", "cold", "ready snapshot refused")
	e.must("up", "--name", "h")
	e.wantStart("h", "restored", "")
	e.must("down", "g", "h")

	// Two first boots of a new shape at once: both run, one snapshot.
	var wg sync.WaitGroup
	res := make([]result, 2)
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = e.run("up", "--name", fmt.Sprintf("p%d", i), "--memory", "384M")
		}()
	}
	wg.Wait()
	for i, r := range res {
		if r.code != 0 {
			t.Fatalf("concurrent first boot %d: %s", i, r)
		}
	}
	if tags := readyTags(t, ready); len(tags) != 2 {
		t.Fatalf("ready snapshots after two concurrent first boots of a new shape: %v", tags)
	}
	e.must("up", "--name", "q", "--memory", "384M")
	e.wantStart("q", "restored", "")
	if out := e.must("exec", "q", "--", "hostname").stdout; out != "q\n" {
		t.Fatalf("hostname %q", out)
	}
	e.must("down", "--all")
	e.assertClean()
	// Nothing half-made is left in the store.
	ents, _ := os.ReadDir(ready)
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), ".") {
			t.Errorf("left in the ready store: %s", ent.Name())
		}
	}
}

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
	out := e.must("exec", "mine", "--", "sh", "-c", `echo "$GREETING $(hostname)"`).stdout
	if strings.TrimSpace(out) != "hi mine" {
		t.Fatalf("claimed sandbox answered %q, want the caller's env and a hostname from its new name", out)
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
