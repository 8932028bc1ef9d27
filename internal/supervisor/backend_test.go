package supervisor

import (
	"context"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/backend/firecracker"
)

func TestStartVMMFirecrackerUnavailable(t *testing.T) {
	t.Setenv("MVM_FIRECRACKER", "/nonexistent/firecracker")
	_, err := startVMM(context.Background(), "firecracker", backend.Spec{CPUs: 1, MemoryMiB: 128, Dir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), firecracker.Unavailable) {
		t.Fatalf("err %v", err)
	}
}

func TestStartVMMUnknownBackend(t *testing.T) {
	_, err := startVMM(context.Background(), "xen", backend.Spec{})
	if err == nil || !strings.Contains(err.Error(), "want qemu") {
		t.Fatalf("err %v", err)
	}
}

func TestNoHostFwd(t *testing.T) {
	var m vmm = noHostFwd{}
	if err := m.HostFwdAdd(context.Background(), backend.HostFwd{}); err == nil {
		t.Fatal("port publishing accepted without networking")
	}
}
