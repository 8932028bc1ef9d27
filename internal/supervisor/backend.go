package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/backend/firecracker"
	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
)

// vmm is what the supervisor drives: a backend.Machine that can also
// publish ports (net.go). Only QEMU has user-mode networking; other
// backends refuse.
type vmm interface {
	backend.Machine
	HostFwdAdd(ctx context.Context, h backend.HostFwd) error
}

// startVMM starts the sandbox's VM; tests replace it with a fake machine
// where a VM is not the point.
var startVMM = startBackend

// holdPipe is the read end of a transient sandbox's hold pipe (fd 4, set
// up by the runtime); tests replace it.
var holdPipe = func() *os.File { return os.NewFile(4, "hold") }

// startBackend starts the VM with the backend the plan names (chosen once,
// when the sandbox was created). Firecracker only runs on a host with
// usable KVM and the binary.
func startBackend(ctx context.Context, name string, spec backend.Spec) (vmm, error) {
	switch name {
	case "", "qemu":
		vm, err := qemu.Start(ctx, spec)
		if err != nil {
			return nil, err
		}
		return vm, nil
	case "firecracker":
		if err := firecrackerUsable(); err != nil {
			return nil, err
		}
		vm, err := firecracker.Start(ctx, spec)
		if err != nil {
			return nil, err
		}
		return noHostFwd{vm}, nil
	default:
		return nil, fmt.Errorf("backend %q: want qemu or firecracker", name)
	}
}

// firecrackerUsable checks for the binary and for KVM that can run a
// guest (the same probe QEMU's accelerator choice uses).
func firecrackerUsable() error {
	if _, err := firecracker.LookBinary(); err != nil {
		return err
	}
	if r := qemu.DetectAccel(); r.Accel != "kvm" {
		return fmt.Errorf("%s (%s)", firecracker.Unavailable, r.Reason)
	}
	return nil
}

// noHostFwd is a Firecracker machine (no user-mode networking). It keeps
// the machine's own methods, SaveState and CompleteIncoming included
// (stateSaver).
type noHostFwd struct{ *firecracker.Machine }

func (noHostFwd) HostFwdAdd(context.Context, backend.HostFwd) error {
	return errors.New("publishing ports needs networking, which the firecracker backend does not support yet")
}
