package runtime

import (
	"errors"
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
