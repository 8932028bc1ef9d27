package shim

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"

	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/mvm-sandbox/mvm/internal/atomicfile"
	mvmerr "github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/runtime"
)

// OwnerLabel is the io.mvm.owner label of the shim's sandboxes.
const OwnerLabel = "containerd-shim-mvm-v2"

// RuntimeVMs runs containers through mvm's runtime (bundle sandboxes):
// every VM is admitted by a signed plan, every process leaves a receipt
// and audit entries.
type RuntimeVMs struct {
	R *runtime.Runtime
	// Receipts is the directory the receipts of the shim's processes are
	// kept in (<data>/receipts), named by receipt id.
	Receipts string
}

// NewRuntimeVMs is the runtime of the directories in the environment
// (MVM_STATE_DIR, ...; containerd's environment, which the shim
// inherits). The supervisors are mvmctl, found beside the shim binary
// (or MVM_MVMCTL_BIN), and so is the guest agent (or MVM_AGENT_BIN).
func NewRuntimeVMs(r *runtime.Runtime) (*RuntimeVMs, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if p, err := filepath.EvalSymlinks(self); err == nil {
		self = p
	}
	exe := os.Getenv("MVM_MVMCTL_BIN")
	if exe == "" {
		exe = filepath.Join(filepath.Dir(self), "mvmctl")
	}
	if _, err := os.Stat(exe); err != nil {
		return nil, fmt.Errorf("mvmctl not found at %s: install it beside %s or set MVM_MVMCTL_BIN", exe, self)
	}
	r.Exe = exe
	if os.Getenv("MVM_AGENT_BIN") == "" {
		r.Agent = filepath.Join(filepath.Dir(exe), "mvm-agent")
	}
	return &RuntimeVMs{R: r, Receipts: filepath.Join(r.Dirs.Data, "receipts")}, nil
}

// Boot admits the container's plan and boots its VM. The sandbox is
// transient: the shim holds it, and it goes when the shim goes.
func (v *RuntimeVMs) Boot(ctx context.Context, req BootRequest) (*VM, error) {
	sb, err := v.R.UpBundle(ctx, runtime.BundleOptions{
		BundleDir: req.Bundle, RootDir: req.RootDir, ReadOnlyRoot: req.ReadOnlyRoot, Hostname: req.Hostname,
		CPUs: req.Resources.CPUs, MemoryMiB: req.Resources.MemoryMiB,
		Profile: req.Policy.Profile, Allow: req.Policy.Allow, Transient: true,
		Labels: map[string]string{
			runtime.LabelContainerdNamespace: req.Namespace,
			runtime.LabelContainerdID:        req.ContainerID,
			runtime.LabelOwner:               OwnerLabel,
		},
	})
	if err != nil {
		return nil, toContainerd(err)
	}
	vm := &VM{ID: sb.ID, Name: sb.Name}
	if sb.Hold != nil {
		vm.Hold = sb.Hold
	}
	if sb.State != nil {
		vm.VMMPID = sb.State.VMMPID
	}
	return vm, nil
}

// ProcessSpec maps the OCI process to what mvm applies (see
// docs/kubernetes.md, "What of the OCI spec is applied").
func ProcessSpec(id string, p *specs.Process, init bool) runtime.ProcessSpec {
	ps := runtime.ProcessSpec{
		ID: id, Args: p.Args, Env: p.Env, Cwd: p.Cwd,
		UID: p.User.UID, GID: p.User.GID, AdditionalGids: p.User.AdditionalGids, Umask: p.User.Umask,
		NoNewPrivileges: p.NoNewPrivileges, Terminal: p.Terminal, Init: init,
	}
	if p.ConsoleSize != nil {
		ps.Rows, ps.Cols = uint32(p.ConsoleSize.Height), uint32(p.ConsoleSize.Width)
	}
	for _, l := range p.Rlimits {
		ps.Rlimits = append(ps.Rlimits, runtime.Rlimit{Type: l.Type, Soft: l.Soft, Hard: l.Hard})
	}
	if c := p.Capabilities; c != nil {
		ps.Capabilities = &runtime.Capabilities{Bounding: c.Bounding, Effective: c.Effective,
			Permitted: c.Permitted, Inheritable: c.Inheritable, Ambient: c.Ambient}
	}
	return ps
}

// ContainerSpec maps the bundle's namespaces, mounts, masked and
// read-only paths to what the guest applies (docs/kubernetes.md, "What of
// the OCI spec is applied"); skipped says what is left out and why.
func ContainerSpec(s *specs.Spec) (c *runtime.ContainerSpec, skipped []string) {
	c = &runtime.ContainerSpec{}
	if l := s.Linux; l != nil {
		for _, ns := range l.Namespaces {
			switch ns.Type {
			case specs.PIDNamespace, specs.UTSNamespace, specs.IPCNamespace:
				c.Namespaces = append(c.Namespaces, string(ns.Type))
				if ns.Path != "" {
					skipped = append(skipped, fmt.Sprintf("namespace %s %s: a host namespace; the container gets one of its own in its VM", ns.Type, ns.Path))
				}
			case specs.MountNamespace:
				// always: the init pivots into its root in a mount
				// namespace of its own
			case specs.NetworkNamespace:
				skipped = append(skipped, "network namespace: the container uses its VM's network")
			default:
				skipped = append(skipped, fmt.Sprintf("namespace %s: not created in the guest", ns.Type))
			}
		}
		c.MaskedPaths, c.ReadonlyPaths = l.MaskedPaths, l.ReadonlyPaths
	}
	for _, m := range s.Mounts {
		bind := m.Type == "bind"
		for _, o := range m.Options {
			bind = bind || o == "bind" || o == "rbind"
		}
		switch {
		case bind && m.Destination == "/dev/shm":
			// The CRI binds the pod's shared memory: the container gets
			// a /dev/shm of its own.
			c.Mounts = append(c.Mounts, runtime.ContainerMount{Destination: m.Destination, Type: "tmpfs", Source: "shm",
				Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}})
			skipped = append(skipped, fmt.Sprintf("bind mount %s on /dev/shm: a tmpfs of the guest instead", m.Source))
		case bind:
			skipped = append(skipped, fmt.Sprintf("bind mount %s on %s: host paths are not shared into the guest", m.Source, m.Destination))
		case m.Type == "cgroup" || m.Type == "cgroup2":
			skipped = append(skipped, fmt.Sprintf("%s mount on %s: cgroups are not applied in the guest", m.Type, m.Destination))
		case m.Type == "proc" || m.Type == "sysfs" || m.Type == "tmpfs" || m.Type == "devpts" || m.Type == "mqueue":
			c.Mounts = append(c.Mounts, runtime.ContainerMount{Destination: path.Clean(m.Destination), Type: m.Type, Source: m.Source, Options: m.Options})
		default:
			skipped = append(skipped, fmt.Sprintf("%s mount on %s: not a file system mounted in the guest", m.Type, m.Destination))
		}
	}
	return c, skipped
}

// Start starts a process through runtime.StartProcess.
func (v *RuntimeVMs) Start(ctx context.Context, vmID string, p ProcessRequest) (int, error) {
	ps := ProcessSpec(p.ID, p.Process, p.Init)
	if p.Init && p.Spec != nil {
		var skipped []string
		ps.Container, skipped = ContainerSpec(p.Spec)
		for _, s := range skipped {
			fmt.Fprintf(os.Stderr, "mvm shim: %s: not applied: %s\n", vmID, s)
		}
	}
	st, err := v.R.StartProcess(ctx, vmID, ps,
		runtime.ProcessIO{Stdin: p.Stdin, Stdout: p.Stdout, Stderr: p.Stderr})
	if err != nil {
		return 0, toContainerd(err)
	}
	return int(st.Pid), nil
}

// Wait waits for a process and keeps its receipt.
func (v *RuntimeVMs) Wait(ctx context.Context, vmID, procID string) (*Exit, error) {
	st, err := v.R.WaitProcess(ctx, vmID, procID)
	if err != nil {
		return nil, toContainerd(err)
	}
	if st.Exit == nil {
		return nil, fmt.Errorf("process %s: no exit status", procID)
	}
	if err := v.keepReceipt(st.ReceiptID, st.Receipt); err != nil {
		fmt.Fprintf(os.Stderr, "mvm shim: %v\n", err)
	}
	return &Exit{Code: int(st.Exit.Code), Signal: int(st.Exit.Signal), ReceiptID: st.ReceiptID}, nil
}

// keepReceipt writes a receipt to <data>/receipts/<id>.json (0600), where
// `mvmctl receipt verify` can check it.
func (v *RuntimeVMs) keepReceipt(id string, receipt []byte) error {
	if id == "" || len(receipt) == 0 {
		return nil
	}
	if err := os.MkdirAll(v.Receipts, 0o700); err != nil {
		return fmt.Errorf("keep receipt %s: %w", id, err)
	}
	return atomicfile.WriteFile(filepath.Join(v.Receipts, id+".json"), receipt, 0o600)
}

// Signal signals a process, or every process of the VM.
func (v *RuntimeVMs) Signal(ctx context.Context, vmID, procID string, sig int, all bool) error {
	return toContainerd(v.R.SignalProcess(ctx, vmID, procID, sig, all))
}

// Resize sets a process's terminal size.
func (v *RuntimeVMs) Resize(ctx context.Context, vmID, procID string, rows, cols uint32) error {
	return toContainerd(v.R.ResizePTY(ctx, vmID, procID, rows, cols))
}

// Forget drops an exited process.
func (v *RuntimeVMs) Forget(ctx context.Context, vmID, procID string) error {
	_, err := v.R.DeleteProcess(ctx, vmID, procID)
	return toContainerd(err)
}

// Pids lists the guest's processes.
func (v *RuntimeVMs) Pids(ctx context.Context, vmID string) ([]GuestProcess, error) {
	ps, err := v.R.Pids(ctx, vmID)
	if err != nil {
		return nil, toContainerd(err)
	}
	out := make([]GuestProcess, 0, len(ps))
	for _, p := range ps {
		out = append(out, GuestProcess{Pid: int(p.Pid), ID: p.ID})
	}
	return out, nil
}

// Stats reads the guest's metrics.
func (v *RuntimeVMs) Stats(ctx context.Context, vmID string) (*Stats, error) {
	st, err := v.R.Stats(ctx, vmID)
	if err != nil {
		return nil, toContainerd(err)
	}
	return &Stats{MemTotalBytes: st.MemTotalBytes, MemAvailableBytes: st.MemAvailableBytes, Processes: st.Processes,
		CPUUsec: st.CPUUserUsec + st.CPUSystemUsec, CPUUserUsec: st.CPUUserUsec, CPUSystemUsec: st.CPUSystemUsec}, nil
}

// Pause freezes the VM in memory (QMP stop): its processes stop, its RAM
// stays.
func (v *RuntimeVMs) Pause(ctx context.Context, vmID string) error {
	_, err := v.R.Pause(ctx, vmID, runtime.PauseOptions{InMemory: true})
	return toContainerd(err)
}

// Resume lets a paused VM run again.
func (v *RuntimeVMs) Resume(ctx context.Context, vmID string) error {
	_, err := v.R.Resume(ctx, vmID)
	return toContainerd(err)
}

// Down takes the VM down; a VM already gone is not an error.
func (v *RuntimeVMs) Down(ctx context.Context, vmID string) error {
	err := v.R.Down(ctx, vmID)
	if err != nil && mvmerr.IsNotFound(err) {
		return nil
	}
	return err
}

// toContainerd keeps the error's message and gives it the containerd
// error kind closest to mvm's, so ctr and the CRI report it sensibly.
func toContainerd(err error) error {
	if err == nil {
		return nil
	}
	switch mvmerr.KindOf(err) {
	case mvmerr.KindNotFound:
		return fmt.Errorf("%w: %v", errdefs.ErrNotFound, err)
	case mvmerr.KindInvalidArgument:
		return fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
	case mvmerr.KindAlreadyExists:
		return fmt.Errorf("%w: %v", errdefs.ErrAlreadyExists, err)
	case mvmerr.KindRefused, mvmerr.KindPermissionDenied, mvmerr.KindFailedPrecondition:
		return fmt.Errorf("%w: %v", errdefs.ErrFailedPrecondition, err)
	case mvmerr.KindUnavailable:
		return fmt.Errorf("%w: %v", errdefs.ErrUnavailable, err)
	}
	return err
}
