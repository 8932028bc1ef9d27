// Package sandboxtest makes sandboxes on disk for tests of the layers
// above (runtime, CLI) where a VM is not the point: a state directory as a
// supervisor would leave it, and a stand-in supervisor process.
package sandboxtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// Options describe a fake sandbox.
type Options struct {
	Status string // sandbox.Running, ... (default Stopped)
	Reason string
	// SupervisorPID is recorded in the state; an active status needs a
	// live process whose command line names the supervisor (Supervisor).
	SupervisorPID int
	// Supervisor, when set, starts a stand-in supervisor whose command
	// line is Supervisor (the runtime's supervisor command) and the
	// sandbox's directory, as the runtime starts one, and records its pid.
	Supervisor string
	Network    string              // spec network mode; "" = none recorded
	Ports      []netpolicy.Publish // written to ports.json when not nil
}

// Make writes a sandbox named name under the state directory root and
// returns its id.
func Make(t testing.TB, root, name string, o Options) string {
	t.Helper()
	l := sandbox.Layout{Root: root}
	id := sandbox.NewID()
	if err := l.Reserve(name, id); err != nil {
		t.Fatal(err)
	}
	dir := l.Dir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	status := o.Status
	if status == "" {
		status = sandbox.Stopped
	}
	if o.Supervisor != "" {
		o.SupervisorPID = Supervisor(t, o.Supervisor, dir)
	}
	now := time.Now().UTC()
	st := sandbox.State{ID: id, Name: name, Status: status, Reason: o.Reason, CPUs: 1, MemoryMiB: 256,
		Image:   sandbox.ImageRef{Name: "minimal", Digest: "sha256:00", ImageProfile: "dev"},
		Created: now, Updated: now, SupervisorPID: o.SupervisorPID}
	if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.StateFile), st); err != nil {
		t.Fatal(err)
	}
	if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.SpecFile), sandbox.Spec{ID: id, Name: name, Network: o.Network}); err != nil {
		t.Fatal(err)
	}
	if o.Ports != nil {
		if err := netpolicy.WritePorts(dir, o.Ports); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

// Supervisor starts a process whose command line carries tag (the
// runtime's supervisor command) followed by args (the sandbox directory it
// supervises, which the runtime checks), so that the runtime takes the
// sandbox for alive; it is killed when the test ends. It returns the pid.
func Supervisor(t testing.TB, tag string, args ...string) int {
	t.Helper()
	cmd := exec.Command("sh", append([]string{"-c", "sleep 600; :", tag}, args...)...)
	// Its own process group, killed whole: killing only sh orphaned the
	// sleep, which kept every descriptor the test inherited open for ten
	// minutes (among them the team's merge lock).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	return cmd.Process.Pid
}
