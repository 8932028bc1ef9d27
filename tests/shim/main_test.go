// Package shim tests containerd-shim-mvm-v2 with a real containerd (Debian's,
// started by the test with its own root, state, socket and config) and real
// microVMs. Nothing on this path is mocked.
package shim

import (
	"fmt"
	"os"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/testbin"
)

var binDir string

func TestMain(m *testing.M) {
	tmp, err := os.MkdirTemp("", "mvm-shim-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := testbin.Build(tmp); err == nil {
		err = testbin.BuildShim(tmp)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(tmp)
		os.Exit(1)
	}
	binDir = tmp
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}
