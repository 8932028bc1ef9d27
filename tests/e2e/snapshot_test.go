package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// upSmall boots a sandbox of the minimal template with a writable disk
// (a rootfs image, not the initramfs alone) and 256 MiB.
func (e *env) upSmall(name string, extra ...string) {
	e.t.Helper()
	dir := filepath.Join(e.t.TempDir(), "img")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("template = \"minimal\"\n"), 0o644)
	e.must(append([]string{"up", dir, "--name", name, "--memory", "256M"}, extra...)...)
}

// TestSnapshotClones: a file written in the guest is in a snapshot taken
// while the sandbox runs (memory and disk at one instant); two clones
// started from it both read it back; a write in one clone is seen neither
// in the other nor in the source; the source keeps running; removing the
// snapshot leaves the clones running.
func TestSnapshotClones(t *testing.T) {
	e := newEnv(t)
	e.upSmall("src")
	// The file stays in the guest's page cache: the snapshot must hold
	// memory and disk consistently for the clones to read it.
	e.must("exec", "src", "--", "sh", "-c", "echo from-source > /data.txt")
	r := e.must("snapshot", "save", "src", "t1", "--json")
	var saved map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &saved); err != nil || saved["tag"] != "t1" || saved["memory_mib"] != 256.0 || saved["holds_secrets"] != false {
		t.Fatalf("save --json: %v %s", err, r.stdout)
	}
	dir := filepath.Join(e.data, "snapshots", "t1")
	ents, _ := os.ReadDir(dir)
	if len(ents) < 5 {
		t.Fatalf("snapshot files: %v", ents)
	}
	for _, ent := range ents {
		if fi, _ := ent.Info(); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", ent.Name(), fi.Mode())
		}
	}
	if r := e.run("snapshot", "save", "src", "t1"); r.code != 6 || !strings.Contains(r.stderr, "exists") {
		t.Fatalf("second save under one tag: %s", r)
	}
	e.must("up", "--from-snapshot", "t1", "--name", "c1")
	e.must("up", "--from-snapshot", "t1", "--name", "c2")
	for _, n := range []string{"src", "c1", "c2"} {
		if r := e.must("exec", n, "--", "cat", "/data.txt"); r.stdout != "from-source\n" {
			t.Fatalf("%s reads %q", n, r.stdout)
		}
	}
	e.must("exec", "c1", "--", "sh", "-c", "echo c1 > /only-c1 && sync")
	for _, n := range []string{"src", "c2"} {
		if r := e.run("exec", n, "--", "cat", "/only-c1"); r.code == 0 {
			t.Fatalf("%s sees c1's write: %s", n, r)
		}
	}
	var ls struct {
		Snapshots []map[string]any `json:"snapshots"`
	}
	r = e.must("snapshot", "ls", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &ls); err != nil || len(ls.Snapshots) != 1 || ls.Snapshots[0]["source"] != "src" {
		t.Fatalf("snapshot ls: %v %s", err, r.stdout)
	}
	r = e.must("boot-report", "c1", "--json")
	if !strings.Contains(r.stdout, `"start":"restored"`) && !strings.Contains(r.stdout, `"start": "restored"`) {
		t.Fatalf("boot-report of a clone: %s", r.stdout)
	}
	e.must("snapshot", "rm", "t1")
	if r := e.must("exec", "c2", "--", "cat", "/data.txt"); r.stdout != "from-source\n" {
		t.Fatalf("clone after snapshot rm: %q", r.stdout)
	}
	if r := e.run("up", "--from-snapshot", "t1", "--name", "c3"); r.code != 3 || !strings.Contains(r.stderr, "snapshot ls") {
		t.Fatalf("restore of a removed snapshot: %s", r)
	}
	e.must("down", "--all")
	e.assertClean()
}

// TestSnapshotTamperedRefused: a snapshot whose memory file has one byte
// flipped, or is truncated, is refused before anything is created, with
// an error that says what to do (exit 126); nothing is left behind.
func TestSnapshotTamperedRefused(t *testing.T) {
	e := newEnv(t)
	e.upSmall("src")
	e.must("snapshot", "save", "src", "flipped")
	e.must("snapshot", "save", "src", "short")
	e.must("down", "src")
	mem := filepath.Join(e.data, "snapshots", "flipped", "memory.state")
	f, err := os.OpenFile(mem, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, 1<<20)
	b[0] ^= 0xff
	f.WriteAt(b, 1<<20)
	f.Close()
	r := e.run("up", "--from-snapshot", "flipped", "--name", "c")
	if r.code != 126 || !strings.Contains(r.stderr, "memory.state does not match") || !strings.Contains(r.stderr, "snapshot rm") {
		t.Fatalf("tampered snapshot: %s", r)
	}
	os.Truncate(filepath.Join(e.data, "snapshots", "short", "memory.state"), 4096)
	r = e.run("up", "--from-snapshot", "short", "--name", "c", "--json")
	if r.code != 126 || !strings.Contains(r.stdout, `"reason":"integrity"`) || !strings.Contains(r.stdout, "truncated") {
		t.Fatalf("truncated snapshot: %s", r)
	}
	e.assertClean()
}
