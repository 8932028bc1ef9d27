package plan

import (
	"errors"
	"fmt"
	"testing"
)

// TestMountLimit: up to 16 host directories are admitted, one more is
// refused with mount.limit.
func TestMountLimit(t *testing.T) {
	mounts := func(n int) []Mount {
		var ms []Mount
		for i := 0; i < n; i++ {
			ms = append(ms, Mount{HostPath: fmt.Sprintf("/src/%d", i), GuestPath: fmt.Sprintf("/m/%d", i), ReadOnly: true})
		}
		return ms
	}
	if err := Standard.Validate(Request{Mounts: mounts(maxMounts)}); err != nil {
		t.Fatalf("%d mounts refused: %v", maxMounts, err)
	}
	var pd *PolicyDenied
	if err := Standard.Validate(Request{Mounts: mounts(maxMounts + 1)}); !errors.As(err, &pd) || pd.Rule != RuleMountLimit {
		t.Fatalf("%d mounts: %v", maxMounts+1, err)
	}
	if maxMounts != 16 {
		t.Fatalf("maxMounts is %d; SPECIFICATION.md and docs/evidence.md promise 16", maxMounts)
	}
}
