package runtime

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// deadPID is the pid of a process that ran and was reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	c := exec.Command("true")
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	return c.Process.Pid
}

// sandboxWithDeadSupervisor makes the directory of a sandbox that was
// running when its supervisor died.
func sandboxWithDeadSupervisor(t *testing.T, r *Runtime) (string, int) {
	t.Helper()
	id := sandbox.NewID()
	dir := r.Layout.Dir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	pid := deadPID(t)
	st := sandbox.State{ID: id, Name: "s", Status: sandbox.Running, SupervisorPID: pid}
	if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.StateFile), st); err != nil {
		t.Fatal(err)
	}
	return dir, pid
}

func dirEntries(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") || e.Name() == sandbox.SuspendedDir {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestStateAfterSupervisorDiedPausing: a supervisor that died while it
// paused to disk, before the commit, took its VM along: the sandbox is
// failed, says it died pausing (also on later reads: the state file is
// corrected), and the uncommitted state is removed. One that died after
// the commit left a paused sandbox; what a dead resume or removal left
// half-done (a disk copy, a saved state being removed) is removed.
func TestStateAfterSupervisorDiedPausing(t *testing.T) {
	r := testRuntime(t)
	dir, pid := sandboxWithDeadSupervisor(t, r)
	pending := filepath.Join(dir, ".tmp-"+strconv.Itoa(pid)+"-0a1b2c3d-"+sandbox.SuspendedDir)
	os.Mkdir(pending, 0o700)
	os.WriteFile(filepath.Join(pending, snapshot.MemoryFile), []byte("half"), 0o600)
	for i := 0; i < 2; i++ {
		st, err := r.state(dir)
		if err != nil {
			t.Fatal(err)
		}
		if st.Status != sandbox.Failed || !strings.Contains(st.Reason, "died while pausing to disk") || st.Suspended {
			t.Fatalf("read %d: %s (%s)", i, st.Status, st.Reason)
		}
		if l := dirEntries(dir); len(l) != 0 {
			t.Fatalf("read %d: left %v", i, l)
		}
	}

	dir, pid = sandboxWithDeadSupervisor(t, r)
	p, err := (&snapshot.Store{Dir: dir}).Begin(sandbox.SuspendedDir)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(p.Dir, snapshot.MemoryFile), []byte("state"), 0o600)
	if _, err := p.Commit(snapshot.Meta{}, evidence.GenerateSigner("host:test")); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, ".rm-0a1b-"+sandbox.SuspendedDir), 0o700)
	os.WriteFile(filepath.Join(dir, ".tmp-"+strconv.Itoa(pid)+"-resume-"+sandbox.UpperDisk), []byte("copy"), 0o600)
	st, err := r.state(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != sandbox.Paused || !st.Suspended {
		t.Fatalf("died after the commit: %s (%s)", st.Status, st.Reason)
	}
	if l := dirEntries(dir); len(l) != 1 || l[0] != sandbox.SuspendedDir {
		t.Fatalf("died after the commit: left %v", l)
	}
}
