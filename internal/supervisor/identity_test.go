package supervisor

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// TestOwnSavedState: only the sandbox's own pause-to-disk state is a
// resume (keep machine-id and MAC); a snapshot, a ready snapshot or
// another sandbox's state is a clone.
func TestOwnSavedState(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "sb", "abc")
	other := filepath.Join(root, "sb", "def")
	for _, d := range []string{filepath.Join(dir, sandbox.SuspendedDir), filepath.Join(other, sandbox.SuspendedDir), filepath.Join(root, "snapshots", "t1")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for incoming, want := range map[string]bool{
		filepath.Join(dir, sandbox.SuspendedDir, snapshot.MemoryFile):          true,
		filepath.Join(dir, ".", sandbox.SuspendedDir, snapshot.MemoryFile):     true,
		filepath.Join(other, sandbox.SuspendedDir, snapshot.MemoryFile):        false,
		filepath.Join(root, "snapshots", "t1", snapshot.MemoryFile):            false,
		filepath.Join(root, "snapshots", sandbox.SuspendedDir, "memory.state"): false,
		"": false,
	} {
		if got := ownSavedState(dir, incoming); got != want {
			t.Errorf("ownSavedState(%q) = %v, want %v", incoming, got, want)
		}
	}
}
