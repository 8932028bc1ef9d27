package shim

import (
	"context"
	"io"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// VMs is what the task service needs of mvm: boot a VM for a container,
// run processes in it, read its stats, take it down. The real one is
// NewRuntimeVMs (internal/runtime); tests of the service's logic use a
// fake.
type VMs interface {
	// Boot admits a plan and boots a VM whose root is req.RootDir.
	Boot(ctx context.Context, req BootRequest) (*VM, error)
	// Run runs one process in the VM until it exits, streaming its
	// stdio. Cancelling ctx kills it.
	Run(ctx context.Context, vmID string, p ProcessRequest) (*Exit, error)
	// Stats reads the guest's metrics.
	Stats(ctx context.Context, vmID string) (*Stats, error)
	// Down stops the VM and removes its state; it is not an error when
	// the VM is already gone.
	Down(ctx context.Context, vmID string) error
}

// BootRequest is a container's VM.
type BootRequest struct {
	// Namespace and ContainerID are containerd's names for the task; they
	// are recorded as the sandbox's owner (`mvmctl ls`).
	Namespace, ContainerID string
	// Bundle is the OCI bundle directory; RootDir the container's root
	// filesystem on the host (mounted by the shim).
	Bundle, RootDir string
	Spec            *specs.Spec
	Resources       Resources
	Policy          Policy
}

// VM is a booted VM.
type VM struct {
	ID, Name string
	// VMMPID is the host pid of the VMM (the pid containerd is given for
	// the task).
	VMMPID int
	// Hold keeps the VM alive: when it closes, even because the shim was
	// killed, the VM is torn down.
	Hold io.Closer
}

// ProcessRequest is one process in a VM.
type ProcessRequest struct {
	Process *specs.Process
	// Stdin, when not nil, is copied to the process; EOF closes its stdin.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Control carries signals and terminal resizes to the process.
	Control <-chan Control
	// Started is called with the guest pid once the process runs.
	Started func(pid int)
	// ReceiptTag names the process in the evidence (exec id).
	ReceiptTag string
}

// Control is a signal or a resize for a running process.
type Control struct {
	Signal     int
	Rows, Cols uint32
}

// Exit is how a process ended.
type Exit struct {
	Code, Signal int
	// ReceiptID names the process's signed receipt.
	ReceiptID string
}

// Status is the containerd exit status: the code, or 128+signal.
func (e *Exit) Status() uint32 {
	if e.Code == 0 && e.Signal > 0 {
		return uint32(128 + e.Signal)
	}
	return uint32(e.Code)
}

// Stats are a guest's metrics.
type Stats struct {
	MemTotalBytes, MemAvailableBytes uint64
	Processes                        uint32
	// CPUUsageNanos is the guest's CPU time (0 when unknown).
	CPUUsageNanos uint64
}
