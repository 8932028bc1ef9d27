package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/backend/firecracker"
	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// fakeFirecrackerBinary installs a "firecracker" that reports version.
func fakeFirecrackerBinary(t *testing.T, version string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "firecracker")
	script := "#!/bin/sh\nprintf 'Firecracker " + version + "\\n\\nSupported snapshot data format versions: v1.0.0\\n'\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MVM_FIRECRACKER", bin)
}

// twoFileSaver saves like Firecracker: the microVM state and the guest
// memory beside it.
type twoFileSaver struct{ *fakeVM }

func (v twoFileSaver) SaveState(_ context.Context, path string) (int64, error) {
	v.record("save")
	os.WriteFile(path, []byte("microvm state"), 0o600)
	os.WriteFile(firecracker.GuestMemoryPath(path), []byte("guest memory"), 0o600)
	return 25, nil
}
func (v twoFileSaver) CompleteIncoming(context.Context) error { return nil }

// TestFirecrackerMachineIsAStateSaver: the supervisor's firecracker
// machine keeps SaveState and CompleteIncoming (before, the wrapper hid
// them and every save was refused).
func TestFirecrackerMachineIsAStateSaver(t *testing.T) {
	var m vmm = noHostFwd{}
	if _, ok := m.(stateSaver); !ok {
		t.Fatal("the firecracker machine cannot save its state")
	}
	// Its save resets the agent channel; QEMU's does not (its
	// virtio-serial channel survives, and nothing reconnects it).
	if r, ok := m.(channelResetter); !ok || !r.SaveResetsChannel() {
		t.Fatal("the firecracker machine does not report that a save resets its agent channel")
	}
	var q vmm = (*qemu.Machine)(nil)
	if _, ok := q.(channelResetter); ok {
		t.Fatal("the qemu machine reports a channel reset on save")
	}
	dir := "/data/snap"
	if got, want := firecracker.GuestMemoryPath(filepath.Join(dir, snapshot.MemoryFile)), filepath.Join(dir, snapshot.GuestMemoryFile); got != want {
		t.Fatalf("firecracker writes its guest memory to %s, the snapshot store expects %s", got, want)
	}
}

// TestFirecrackerPauseToDiskRecordsBothFilesAndVersion: a pause to disk
// of a firecracker sandbox commits both state files, hashed in the
// signed sidecar, with the backend and the firecracker version recorded;
// another firecracker version no longer matches.
func TestFirecrackerPauseToDiskRecordsBothFilesAndVersion(t *testing.T) {
	fakeFirecrackerBinary(t, "v1.7.0")
	dir := t.TempDir()
	vm := &fakeVM{dir: dir, done: make(chan struct{})}
	signer := evidence.GenerateSigner("host:test")
	s := &supervisor{dir: dir, vm: twoFileSaver{vm}, signer: signer, events: func(string, *sandbox.State, map[string]any) {}}
	s.spec.Backend = "firecracker"
	s.vmSpec = backend.Spec{CPUs: 1, MemoryMiB: 128}
	s.state.Status = sandbox.Running
	meta, err := s.suspend()
	if err != nil {
		t.Fatal(err)
	}
	m := meta.Match
	if m.Backend != "firecracker" || m.VMMVersion != "Firecracker v1.7.0" || m.VMMBinary == "" {
		t.Fatalf("match %+v", m)
	}
	sn, err := (&snapshot.Store{Dir: dir}).Get(sandbox.SuspendedDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := sn.Verify(signer.Public); err != nil {
		t.Fatalf("saved firecracker state refused: %v", err)
	}
	for _, f := range []string{snapshot.MemoryFile, snapshot.GuestMemoryFile} {
		if e, ok := sn.Meta.File(f); !ok || e.Digest == "" {
			t.Fatalf("%s not in the sidecar: %+v", f, sn.Meta.Files)
		}
	}
	fakeFirecrackerBinary(t, "v1.8.0")
	now, err := MachineMatch("firecracker", s.vmSpec, vm.Accel(), "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if d := m.Diff(now); !strings.Contains(d, "vmm_version") {
		t.Fatalf("another firecracker version matches (diff %q)", d)
	}
}

func TestMachineMatchBackends(t *testing.T) {
	t.Setenv("MVM_FIRECRACKER", "/nonexistent/firecracker")
	if _, err := MachineMatch("firecracker", backend.Spec{}, "kvm", "", "", ""); err == nil || !strings.Contains(err.Error(), "firecracker") {
		t.Fatalf("firecracker match without the binary: %v", err)
	}
	if _, err := MachineMatch("xen", backend.Spec{}, "kvm", "", "", ""); err == nil || !strings.Contains(err.Error(), "want qemu or firecracker") {
		t.Fatalf("unknown backend: %v", err)
	}
	fakeFirecrackerBinary(t, "v1.7.0")
	fc, err := MachineMatch("firecracker", backend.Spec{CPUs: 1, MemoryMiB: 128}, "kvm", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if fc.Backend != "firecracker" {
		t.Fatalf("match %+v", fc)
	}
	// QEMU's match is what it was: existing QEMU snapshots still match.
	q, err := MachineMatch("", backend.Spec{CPUs: 1, MemoryMiB: 128}, "tcg", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	q2, _ := MachineMatch("qemu", backend.Spec{CPUs: 1, MemoryMiB: 128}, "tcg", "", "", "")
	if q.Backend != "qemu" || q.VMMVersion != "" || q.Key() != q2.Key() || q.Diff(fc) == "" {
		t.Fatalf("qemu match %+v", q)
	}
}

// resettingSaver saves like Firecracker and, like it, resets the agent
// channel on a save: the connection open at the save is closed
// (firecracker's snapshot-support.md, "Vsock device reset"). afterSave,
// when set, is how the guest answers dials after the save.
type resettingSaver struct {
	twoFileSaver
	afterSave string
	// hold, when set, makes the save wait until it is closed.
	hold <-chan struct{}
}

func (v resettingSaver) SaveState(ctx context.Context, path string) (int64, error) {
	if v.hold != nil {
		<-v.hold
	}
	n, err := v.twoFileSaver.SaveState(ctx, path)
	if g := v.guestConn(); g != nil {
		g.Close()
	}
	if v.afterSave != "" {
		v.setGuest(v.afterSave)
	}
	return n, err
}
func (resettingSaver) SaveResetsChannel() bool { return true }

// startFirecrackerLike runs a supervisor whose machine saves with save.
func startFirecrackerLike(t *testing.T, save func(*fakeVM) vmm) *harness {
	t.Helper()
	fakeFirecrackerBinary(t, "v1.7.0")
	h := startSupervisorOpts(t, "ok", func(s *sandbox.Spec) { s.Backend = "firecracker" },
		harnessOpts{wrap: save, signer: evidence.GenerateSigner("host:test")})
	h.ready = h.readReady()
	if !h.ready.OK {
		t.Fatalf("ready: %+v", h.ready)
	}
	return h
}

// execEcho runs `echo WORD` through the sandbox's agent socket, as
// `mvmctl exec` does.
func execEcho(ctx context.Context, dir, word string) error {
	c, err := agentapi.Dial(ctx, func(ctx context.Context) (net.Conn, error) { return sandbox.DialIn(ctx, dir, sandbox.AgentSocket) })
	if err != nil {
		return err
	}
	defer c.Close()
	var out strings.Builder
	res, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"echo", word}, Stdout: &out})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 || out.String() != word+"\n" {
		return fmt.Errorf("exec: exit %d, stdout %q", res.ExitCode, out.String())
	}
	return nil
}

func saveSnap(ctx context.Context, dir, store, tag string) (*sandbox.Response, error) {
	return sandbox.Control(ctx, dir, sandbox.Request{Op: "snapshot", Snapshot: &sandbox.SnapshotRequest{StoreDir: store, Tag: tag}})
}

// TestFirecrackerSnapshotSaveKeepsExec: a snapshot save of a running
// firecracker sandbox resets its agent channel; the supervisor dials a new
// one and exec works afterwards, and so after a save of the sandbox while
// it was paused, once it is resumed. (Before, the supervisor kept the dead
// session and exec failed after the save: seen failing.) A machine whose
// save keeps the channel (QEMU) is not reconnected.
func TestFirecrackerSnapshotSaveKeepsExec(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := startFirecrackerLike(t, func(vm *fakeVM) vmm { return resettingSaver{twoFileSaver: twoFileSaver{vm}} })
	store := t.TempDir()
	if err := execEcho(ctx, h.dir, "before"); err != nil {
		t.Fatal(err)
	}
	hellos := h.vm.hellos.Load()
	if r, err := saveSnap(ctx, h.dir, store, "t1"); err != nil || !r.OK {
		t.Fatalf("snapshot save: %+v %v", r, err)
	}
	if err := execEcho(ctx, h.dir, "after"); err != nil {
		t.Fatalf("exec after a snapshot save: %v", err)
	}
	// The supervisor's own client is on the new channel too.
	if got := h.vm.hellos.Load() - hellos; got != 2 {
		t.Fatalf("%d Hellos after the save, want 2 (the supervisor's new client and the exec)", got)
	}
	// Saved while paused: the guest does not run, so the new channel
	// comes with the resume.
	if r, err := sandbox.Control(ctx, h.dir, sandbox.Request{Op: "pause"}); err != nil || !r.OK {
		t.Fatalf("pause: %+v %v", r, err)
	}
	if r, err := saveSnap(ctx, h.dir, store, "t2"); err != nil || !r.OK {
		t.Fatalf("snapshot save of a paused sandbox: %+v %v", r, err)
	}
	if r, err := sandbox.Control(ctx, h.dir, sandbox.Request{Op: "resume"}); err != nil || !r.OK || r.State.Status != sandbox.Running {
		t.Fatalf("resume: %+v %v", r, err)
	}
	if err := execEcho(ctx, h.dir, "resumed"); err != nil {
		t.Fatalf("exec after a save while paused and a resume: %v", err)
	}
	for _, tag := range []string{"t1", "t2"} {
		if _, err := (&snapshot.Store{Dir: store}).Get(tag); err != nil {
			t.Fatalf("snapshot %s: %v", tag, err)
		}
	}
	if r, err := sandbox.Control(ctx, h.dir, sandbox.Request{Op: "stop"}); err != nil || !r.OK {
		t.Fatalf("stop: %+v %v", r, err)
	}
	h.wait()

	// A machine whose save keeps the channel: no new channel.
	q := startFirecrackerLike(t, func(vm *fakeVM) vmm { return twoFileSaver{vm} })
	hellos = q.vm.hellos.Load()
	if r, err := saveSnap(ctx, q.dir, t.TempDir(), "q"); err != nil || !r.OK {
		t.Fatalf("snapshot save: %+v %v", r, err)
	}
	if got := q.vm.hellos.Load(); got != hellos {
		t.Fatalf("a save that keeps the channel reconnected (%d Hellos, want %d)", got, hellos)
	}
	if err := execEcho(ctx, q.dir, "kept"); err != nil {
		t.Fatal(err)
	}
}

// TestFirecrackerSnapshotSaveChannelLost: when no new channel comes after
// the save (the guest does not answer), the save fails with what happened
// and what to do, no snapshot is left under the tag, and the sandbox ends
// failed with that reason (its VM killed), not a silent hang.
func TestFirecrackerSnapshotSaveChannelLost(t *testing.T) {
	old := reconnectTimeout
	reconnectTimeout = 300 * time.Millisecond
	t.Cleanup(func() { reconnectTimeout = old })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := startFirecrackerLike(t, func(vm *fakeVM) vmm {
		return resettingSaver{twoFileSaver: twoFileSaver{vm}, afterSave: "silent"}
	})
	store := t.TempDir()
	r, err := saveSnap(ctx, h.dir, store, "t")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"snapshot t", "agent channel did not come back", "firecracker resets vsock", "handshake", "mvmctl down box"} {
		if r.OK || !strings.Contains(r.Error, want) {
			t.Fatalf("save whose channel is lost: %+v (want %q)", r, want)
		}
	}
	// The reply came after the failed state was written.
	st, err := sandbox.ReadState(h.dir)
	if err != nil || st.Status != sandbox.Failed || !strings.Contains(st.Reason, "agent channel did not come back") {
		t.Fatalf("state %+v, %v", st, err)
	}
	if err := h.wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := (&snapshot.Store{Dir: store}).Get("t"); !errors.Is(err, snapshot.ErrNotFound) {
		t.Fatalf("a save that failed is listed: %v", err)
	}
	if calls := h.vm.called(); calls[len(calls)-1] != "kill" {
		t.Fatalf("machine calls %v: the VM of the failed sandbox was not killed", calls)
	}
	if !h.sawEvent("sandbox.failed:") {
		t.Fatalf("events %v", h.events)
	}
}

// TestFirecrackerSaveHoldsNewAgentStreams: an agent connection made while
// a save is in progress waits for the new channel and works (it is not
// put on the channel the save is about to reset).
func TestFirecrackerSaveHoldsNewAgentStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hold := make(chan struct{})
	h := startFirecrackerLike(t, func(vm *fakeVM) vmm {
		return resettingSaver{twoFileSaver: twoFileSaver{vm}, hold: hold}
	})
	saved := make(chan error, 1)
	go func() {
		r, err := saveSnap(ctx, h.dir, t.TempDir(), "t")
		if err == nil && !r.OK {
			err = errors.New(r.Error)
		}
		saved <- err
	}()
	// The save is under way once the guest is stopped.
	for !slices.Contains(h.vm.called(), "pause") {
		select {
		case <-ctx.Done():
			t.Fatal("the save did not stop the guest")
		case <-time.After(5 * time.Millisecond):
		}
	}
	conn, err := sandbox.DialIn(ctx, h.dir, sandbox.AgentSocket)
	if err != nil {
		t.Fatal(err)
	}
	execd := make(chan error, 1)
	go func() {
		first := true
		c, err := agentapi.Dial(ctx, func(context.Context) (net.Conn, error) {
			if !first {
				return nil, errors.New("one connection only")
			}
			first = false
			return conn, nil
		})
		if err != nil {
			execd <- err
			return
		}
		defer c.Close()
		var out strings.Builder
		if _, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"echo", "during"}, Stdout: &out}); err != nil || out.String() != "during\n" {
			execd <- fmt.Errorf("exec: %q %v", out.String(), err)
			return
		}
		execd <- nil
	}()
	close(hold)
	if err := <-saved; err != nil {
		t.Fatalf("save: %v", err)
	}
	if err := <-execd; err != nil {
		t.Fatalf("an agent connection made during the save: %v", err)
	}
}
