package shim

import (
	"context"
	"io"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// VMs is what the task service needs of mvm: boot a VM for a container,
// run processes in it, read its stats, take it down. The real one is
// RuntimeVMs (internal/runtime); tests of the service's logic use a fake.
type VMs interface {
	// Boot admits a plan and boots a VM whose processes' root is
	// req.RootDir.
	Boot(ctx context.Context, req BootRequest) (*VM, error)
	// Start starts a process and returns its guest pid once it runs;
	// ctx bounds only the start. Its stdio is served until it exits.
	Start(ctx context.Context, vmID string, p ProcessRequest) (pid int, err error)
	// Wait returns once the process has exited and its output is written.
	Wait(ctx context.Context, vmID, procID string) (*Exit, error)
	// Signal signals a process, or with all every process of the VM.
	Signal(ctx context.Context, vmID, procID string, sig int, all bool) error
	// Resize sets a process's terminal size.
	Resize(ctx context.Context, vmID, procID string, rows, cols uint32) error
	// Forget drops an exited process.
	Forget(ctx context.Context, vmID, procID string) error
	// Pids lists the VM's processes (guest pids), with the id of those
	// Start started.
	Pids(ctx context.Context, vmID string) ([]GuestProcess, error)
	// Stats reads the guest's metrics.
	Stats(ctx context.Context, vmID string) (*Stats, error)
	// Pause stops the VM's vCPUs (in memory); Resume lets them run.
	Pause(ctx context.Context, vmID string) error
	Resume(ctx context.Context, vmID string) error
	// Down stops the VM and removes its state; it is not an error when
	// the VM is already gone.
	Down(ctx context.Context, vmID string) error
}

// BootRequest is a container's VM.
type BootRequest struct {
	// Namespace and ContainerID are containerd's names for the task; they
	// label the sandbox (`mvmctl ls`).
	Namespace, ContainerID string
	// Bundle is the OCI bundle directory; RootDir the container's root
	// filesystem on the host (mounted by the shim).
	Bundle, RootDir string
	// ReadOnlyRoot is the spec's root.readonly; Hostname its hostname.
	ReadOnlyRoot bool
	Hostname     string
	Resources    Resources
	Policy       Policy
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
	// ID names the process in the VM: "init" for the task's own, else
	// the exec id.
	ID      string
	Process *specs.Process
	// Init marks the task's process: when it exits, the rest are killed.
	Init bool
	// Spec is the bundle's spec, for the init: the container it sets up
	// (namespaces, mounts, masked and read-only paths; ContainerSpec).
	Spec *specs.Spec
	// Stdin, when not nil, is copied to the process; EOF closes its stdin.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Exit is how a process ended.
type Exit struct {
	Code, Signal int
	// ReceiptID names the process's signed receipt.
	ReceiptID string
}

// Status is the containerd exit status: the code (which for a signal is
// already 128+N), or 128+signal when only the signal is known.
func (e *Exit) Status() uint32 {
	if e.Code == 0 && e.Signal > 0 {
		return uint32(128 + e.Signal)
	}
	return uint32(e.Code)
}

// GuestProcess is one process of a VM.
type GuestProcess struct {
	Pid int
	// ID is the ProcessRequest.ID of a process Start started, "" for
	// their children.
	ID string
}

// Stats are a guest's metrics.
type Stats struct {
	MemTotalBytes, MemAvailableBytes uint64
	Processes                        uint32
	// CPUUsec is the guest's CPU time, user and system (0 when unknown).
	CPUUsec, CPUUserUsec, CPUSystemUsec uint64
}
