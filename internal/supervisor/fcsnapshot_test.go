package supervisor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/backend/firecracker"
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
