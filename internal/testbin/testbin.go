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

// Build compiles mvmctl, mvm-agent and mvm-egress (both static) into dir. With
// MVM_TEST_RACE=1, mvmctl (and so every supervisor) is built with the race
// detector; point GORACE=log_path=... somewhere to collect reports.
func Build(dir string) error {
	var race []string
	if os.Getenv("MVM_TEST_RACE") == "1" {
		race = []string{"-race"}
	}
	for _, b := range []struct {
		out, pkg string
		env      []string
		flags    []string
	}{
		{"mvmctl", "./cmd/mvmctl", nil, race},
		{"mvm-agent", "./cmd/mvm-agent", []string{"CGO_ENABLED=0"}, nil},
		{"mvm-egress", "./cmd/mvm-egress", []string{"CGO_ENABLED=0"}, nil},
	} {
		// The same flags as `make build`, so tests and benchmarks boot
		// what users get (a stripped agent makes a smaller initramfs).
		args := append([]string{"build", "-ldflags", "-s -w"}, b.flags...)
		cmd := exec.Command("go", append(args, "-o", filepath.Join(dir, b.out), b.pkg)...)
		cmd.Dir = Root()
		cmd.Env = append(os.Environ(), b.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return nil
}

// Main builds the binaries into a temporary directory, stores its path in
// *dir, runs the tests and removes the directory: the TestMain of every
// package that drives the real binaries.
func Main(m interface{ Run() int }, dir *string) {
	tmp, err := os.MkdirTemp("", "mvm-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := Build(tmp); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(tmp)
		os.Exit(1)
	}
	*dir = tmp
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}

// BuildShim compiles containerd-shim-mvm-v2 into dir (beside mvmctl, where
// the shim looks for it).
func BuildShim(dir string) error {
	cmd := exec.Command("go", "build", "-ldflags", "-s -w", "-o", filepath.Join(dir, "containerd-shim-mvm-v2"), "./cmd/containerd-shim-mvm-v2")
	cmd.Dir = Root()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the shim: %v\n%s", err, out)
	}
	return nil
}
