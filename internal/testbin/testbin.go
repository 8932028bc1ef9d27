// Package testbin builds the real mvmctl and mvm-agent binaries for tests
// and benchmarks that drive them as a user would.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// Root is the repository root.
func Root() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(self), "..", "..")
}

// Build compiles mvmctl and mvm-agent (static) into dir.
func Build(dir string) error {
	for _, b := range []struct {
		out, pkg string
		env      []string
	}{
		{"mvmctl", "./cmd/mvmctl", nil},
		{"mvm-agent", "./cmd/mvm-agent", []string{"CGO_ENABLED=0"}},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Dir = Root()
		cmd.Env = append(os.Environ(), b.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return nil
}
