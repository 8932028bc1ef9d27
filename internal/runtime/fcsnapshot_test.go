package runtime

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// TestSavedStateOfAnotherBackendIsRefused: a Firecracker snapshot is
// never handed to QEMU, nor a QEMU one to Firecracker: the restore's
// backend (its plan's) must be the one the state was saved by.
func TestSavedStateOfAnotherBackendIsRefused(t *testing.T) {
	r := &Runtime{}
	cases := []struct{ saved, restore, want string }{
		{"firecracker", "qemu", "saved by the firecracker backend and would be restored by qemu"},
		{"qemu", "firecracker", "saved by the qemu backend and would be restored by firecracker"},
		{"", "firecracker", "saved by the qemu backend and would be restored by firecracker"},
	}
	for _, c := range cases {
		err := r.checkMatch(`snapshot "t"`, snapshot.Match{Backend: c.saved}, sandbox.Spec{Backend: c.restore}, &plan.Plan{Backend: c.restore})
		if !errors.Is(err, snapshot.ErrMismatch) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `snapshot "t"`) {
			t.Errorf("saved by %q, restored by %q: %v", c.saved, c.restore, err)
		}
	}
	for _, same := range [][2]string{{"qemu", "qemu"}, {"", "qemu"}, {"qemu", ""}, {"firecracker", "firecracker"}} {
		if err := checkBackend("x", snapshot.Match{Backend: same[0]}, same[1]); err != nil {
			t.Errorf("%q vs %q: %v", same[0], same[1], err)
		}
	}
}

// TestFirecrackerSandboxIsSavable: the runtime hands a firecracker
// sandbox's snapshot and pause to disk to its supervisor (before, it
// refused them as "need the qemu backend").
func TestFirecrackerSandboxIsSavable(t *testing.T) {
	dir := t.TempDir()
	if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.SpecFile), sandbox.Spec{Backend: "firecracker"}); err != nil {
		t.Fatal(err)
	}
	r := &Runtime{}
	for _, b := range []string{"firecracker", "qemu", ""} {
		if err := r.checkSavable(&sandbox.State{Name: "sb", Backend: b}, dir); err != nil {
			t.Errorf("backend %q: %v", b, err)
		}
	}
	if err := r.checkSavable(&sandbox.State{Name: "sb", Backend: "xen"}, dir); err == nil || !strings.Contains(err.Error(), "qemu or firecracker") {
		t.Errorf("unknown backend: %v", err)
	}
}
