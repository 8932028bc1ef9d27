package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/errdefs"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	mvmerr "github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// RuntimeVMs runs containers through mvm's runtime: every VM is admitted
// by a signed plan, every process leaves a receipt and audit entries.
type RuntimeVMs struct {
	R *runtime.Runtime
	// Receipts is the directory the receipts of the shim's processes are
	// written to (<data>/receipts).
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
// transient: it is held by the shim, and goes when the shim goes.
func (v *RuntimeVMs) Boot(ctx context.Context, req BootRequest) (*VM, error) {
	o := runtime.UpOptions{
		CPUs: req.Resources.CPUs, MemoryMiB: req.Resources.MemoryMiB,
		RunProfile: req.Policy.Profile, Transient: true,
		Owner: &sandbox.Owner{Kind: "containerd", Namespace: req.Namespace, ID: req.ContainerID},
	}
	if len(req.Policy.Allow) > 0 {
		// Annotations come from whoever wrote the pod: an untrusted
		// origin, which may not reach the host's loopback or private
		// addresses.
		cfg, _, err := netpolicy.Build(netpolicy.Request{Allow: req.Policy.Allow}, func(string) (string, bool) { return "", false })
		if err != nil {
			return nil, fmt.Errorf("%w: annotation %s: %v", errdefs.ErrInvalidArgument, AnnotationAllow, err)
		}
		o.Network = cfg
	}
	if err := bootRoot(&o, req); err != nil {
		return nil, err
	}
	sb, err := v.R.Up(ctx, o)
	if err != nil {
		return nil, toContainerd(err)
	}
	vm := &VM{ID: sb.ID, Name: sb.Name, Hold: sb.Hold}
	if sb.State != nil {
		vm.VMMPID = sb.State.VMMPID
	}
	return vm, nil
}

// Run runs one process through runtime.Exec and keeps its receipt.
func (v *RuntimeVMs) Run(ctx context.Context, vmID string, p ProcessRequest) (*Exit, error) {
	env, err := envMap(p.Process.Env)
	if err != nil {
		return nil, err
	}
	ctl := make(chan *pb.ExecInput, 8)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for {
			select {
			case <-cctx.Done():
				return
			case c, ok := <-p.Control:
				if !ok {
					return
				}
				var m *pb.ExecInput
				if c.Signal != 0 {
					m = &pb.ExecInput{Msg: &pb.ExecInput_Signal{Signal: int32(c.Signal)}}
				} else {
					m = &pb.ExecInput{Msg: &pb.ExecInput_Resize{Resize: &pb.Resize{Rows: c.Rows, Cols: c.Cols}}}
				}
				select {
				case ctl <- m:
				case <-cctx.Done():
					return
				}
			}
		}
	}()
	o := runtime.ExecOptions{
		Argv: p.Process.Args, Env: env, Cwd: p.Process.Cwd, TTY: p.Process.Terminal,
		Stdin: p.Stdin, Stdout: p.Stdout, Stderr: p.Stderr, Control: ctl,
		Started: func(pid int32) {
			if p.Started != nil {
				p.Started(int(pid))
			}
		},
	}
	if p.Process.ConsoleSize != nil {
		o.Rows, o.Cols = uint32(p.Process.ConsoleSize.Height), uint32(p.Process.ConsoleSize.Width)
	}
	processOptions(&o, p.Process)
	res, err := v.R.Exec(cctx, vmID, o)
	if err != nil {
		return nil, toContainerd(err)
	}
	if err := v.keepReceipt(res.ReceiptID, res.Receipt); err != nil {
		fmt.Fprintf(os.Stderr, "mvm shim: %v\n", err)
	}
	return &Exit{Code: res.ExitCode, Signal: res.Signal, ReceiptID: res.ReceiptID}, nil
}

func (v *RuntimeVMs) keepReceipt(id string, receipt []byte) error {
	if id == "" || len(receipt) == 0 {
		return nil
	}
	if err := os.MkdirAll(v.Receipts, 0o700); err != nil {
		return fmt.Errorf("keep receipt %s: %w", id, err)
	}
	return os.WriteFile(filepath.Join(v.Receipts, id+".json"), receipt, 0o600)
}

// Stats reads the guest's metrics.
func (v *RuntimeVMs) Stats(ctx context.Context, vmID string) (*Stats, error) {
	st, err := v.R.Stats(ctx, vmID)
	if err != nil {
		return nil, toContainerd(err)
	}
	return &Stats{MemTotalBytes: st.MemTotalBytes, MemAvailableBytes: st.MemAvailableBytes, Processes: st.Processes}, nil
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
	switch mvmerr.KindOf(err) {
	case mvmerr.KindNotFound:
		return fmt.Errorf("%w: %v", errdefs.ErrNotFound, err)
	case mvmerr.KindInvalidArgument:
		return fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
	case mvmerr.KindRefused, mvmerr.KindPermissionDenied, mvmerr.KindFailedPrecondition:
		return fmt.Errorf("%w: %v", errdefs.ErrFailedPrecondition, err)
	case mvmerr.KindUnavailable:
		return fmt.Errorf("%w: %v", errdefs.ErrUnavailable, err)
	}
	return err
}
