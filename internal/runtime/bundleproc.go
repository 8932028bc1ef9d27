package runtime

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/evidence"
)

// Processes started by StartProcess live in this process (the caller, the
// containerd shim, is long-lived): each holds its agent stream, which
// carries its stdio, signals and resizes, and ends with its exit. Closing
// the stream (the caller dies) kills the process in the guest.

// liveProc is one process StartProcess started.
type liveProc struct {
	sandboxID, id string
	pid           int32
	started       time.Time
	control       chan *pb.ExecInput
	cancel        context.CancelFunc
	done          chan struct{} // closed once exit/err are set

	mu        sync.Mutex
	exit      *ProcExit
	exited    time.Time
	err       error
	receiptID string
	receipt   []byte
}

func (p *liveProc) status() *ProcessStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return &ProcessStatus{ID: p.id, Pid: p.pid, Started: p.started, Exit: p.exit, Exited: p.exited, ReceiptID: p.receiptID, Receipt: p.receipt}
}

// liveTable holds the live processes of every sandbox this Runtime
// started processes in, keyed by sandbox id then process id.
type liveTable struct {
	mu    sync.Mutex
	procs map[string]map[string]*liveProc
}

var (
	liveTablesMu sync.Mutex
	liveTables   = map[*Runtime]*liveTable{}
)

func (r *Runtime) live() *liveTable {
	liveTablesMu.Lock()
	defer liveTablesMu.Unlock()
	t, ok := liveTables[r]
	if !ok {
		t = &liveTable{procs: map[string]map[string]*liveProc{}}
		liveTables[r] = t
	}
	return t
}

func (t *liveTable) get(sandboxID, id string) (*liveProc, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.procs[sandboxID][id]
	if !ok {
		return nil, errdefs.WithReason(errdefs.KindNotFound, errdefs.ReasonProcess, fmt.Errorf("no process %q in sandbox %s (started by this process)", id, sandboxID))
	}
	return p, nil
}

// drop forgets a sandbox's processes and ends their streams.
func (t *liveTable) drop(sandboxID string) {
	t.mu.Lock()
	procs := t.procs[sandboxID]
	delete(t.procs, sandboxID)
	t.mu.Unlock()
	for _, p := range procs {
		p.cancel()
	}
}

// StartProcess starts spec in a bundle sandbox and returns once it runs
// in the guest (its pid known), or with why it could not start: a
// command not found (errdefs not_found, reason command), not executable
// (permission_denied), a bad spec (invalid_argument). stdio is served
// until the process exits; ctx bounds only the start. The run is audited
// (exec.started) and gets a signed receipt when it exits (exec.finished).
func (r *Runtime) StartProcess(ctx context.Context, name string, spec ProcessSpec, stdio ProcessIO) (*ProcessStatus, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	sbID, dir, err := r.dir(name)
	if err != nil {
		return nil, err
	}
	bp, err := bundleProcess(spec)
	if err != nil {
		return nil, err
	}
	t := r.live()
	t.mu.Lock()
	if _, dup := t.procs[sbID][spec.ID]; dup {
		t.mu.Unlock()
		return nil, errdefs.Errorf(errdefs.KindAlreadyExists, "process %q exists in sandbox %s", spec.ID, name)
	}
	p := &liveProc{sandboxID: sbID, id: spec.ID, control: make(chan *pb.ExecInput, 16), done: make(chan struct{})}
	if t.procs[sbID] == nil {
		t.procs[sbID] = map[string]*liveProc{}
	}
	t.procs[sbID][spec.ID] = p // reserved; removed again if the start fails
	t.mu.Unlock()
	unreserve := func() {
		t.mu.Lock()
		if t.procs[sbID][spec.ID] == p {
			delete(t.procs[sbID], spec.ID)
		}
		t.mu.Unlock()
	}

	c, st, err := r.Connect(ctx, name)
	if err != nil {
		unreserve()
		return nil, err
	}
	if !hasCapability(c.Hello.GetCapabilities(), "bundle") {
		c.Close()
		unreserve()
		return nil, errdefs.Errorf(errdefs.KindUnavailable, "the agent of %s cannot run bundle processes: rebuild mvm-agent (`make build`)", name)
	}
	w, err := r.witness()
	if err != nil {
		c.Close()
		unreserve()
		return nil, err
	}
	evEnv := map[string]string{}
	for _, e := range spec.Env {
		k, v, _ := strings.Cut(e, "=")
		evEnv[k] = v
	}
	inv := evidence.RedactInvocation(spec.Args, evEnv)
	fields := inv.Fields()
	fields["process_id"] = spec.ID
	if _, err := w.chain.Append(evidence.KindExecStarted, st.ID, fields); err != nil {
		c.Close()
		unreserve()
		return nil, fmt.Errorf("audit: %w", err)
	}
	inH, outH, errH := evidence.NewHasher(), evidence.NewHasher(), evidence.NewHasher()
	req := agentapi.ExecRequest{
		Argv: spec.Args, Cwd: spec.Cwd, TTY: spec.Terminal, Rows: spec.Rows, Cols: spec.Cols,
		Stdout: teeWriter(stdio.Stdout, outH), Stderr: teeWriter(stdio.Stderr, errH),
		Control: p.control, Bundle: bp, ID: spec.ID,
	}
	if stdio.Stdin != nil {
		req.Stdin = io.TeeReader(stdio.Stdin, inH)
	}
	pctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	startedCh := make(chan int32, 1)
	req.Started = func(pid int32) { startedCh <- pid }
	type result struct {
		res *agentapi.ExecResult
		err error
	}
	resCh := make(chan result, 1)
	startTime := time.Now()
	go func() {
		res, err := c.Exec(pctx, req)
		resCh <- result{res, err}
	}()
	failed := func(err error) (*ProcessStatus, error) {
		cancel()
		c.Close()
		unreserve()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done) // a WaitProcess that raced the start returns
		f := inv.Fields()
		f["process_id"] = spec.ID
		f["outcome"] = execFailureTag(err, ctx)
		w.chain.Append("exec.failed", st.ID, f)
		return nil, err
	}
	started := func(pid int32) {
		p.mu.Lock()
		p.pid, p.started = pid, startTime
		p.mu.Unlock()
	}
	select {
	case pid := <-startedCh:
		started(pid)
	case res := <-resCh:
		// A quick process may have started and ended before this select
		// ran: its start was reported all the same.
		select {
		case pid := <-startedCh:
			started(pid)
			resCh <- res // for the waiter below
		default:
			if res.err == nil {
				res.err = errdefs.Errorf(errdefs.KindGuest, "agent protocol: process %s ended before it started", spec.ID)
			}
			return failed(res.err)
		}
	case <-ctx.Done():
		return failed(ctx.Err())
	}
	go func() {
		res := <-resCh
		c.Close()
		cancel()
		p.mu.Lock()
		defer p.mu.Unlock()
		defer close(p.done)
		p.exited = time.Now()
		if res.err != nil {
			p.err = fmt.Errorf("process %s of %s: %w", spec.ID, name, res.err)
			f := inv.Fields()
			f["process_id"] = spec.ID
			f["outcome"] = "lost"
			w.chain.Append("exec.failed", st.ID, f)
			return
		}
		p.exit = &ProcExit{Code: int32(res.res.ExitCode), Signal: int32(res.res.Signal)}
		receiptID := evidence.NewID()
		receipt, _, rerr := evidence.RecordRun(w.chain, w.signer, evidence.RunRecord{
			ReceiptID: receiptID, SandboxID: st.ID, ImageDigest: st.Image.Digest, KernelDigest: kernelDigest(dir),
			PlanHash: planHash(dir), Backend: backendOf(dir), Argv: spec.Args, Env: evEnv,
			Stdin: inH.Digest(), Stdout: outH.Digest(), Stderr: errH.Digest(),
			ExitCode: res.res.ExitCode, StartedAt: startTime, FinishedAt: p.exited,
		})
		if rerr == nil {
			p.receiptID, p.receipt = receiptID, receipt
		}
	}()
	return p.status(), nil
}

func hasCapability(caps []string, c string) bool {
	for _, x := range caps {
		if x == c {
			return true
		}
	}
	return false
}

// bundleProcess is the agent's form of a (validated) spec.
func bundleProcess(spec ProcessSpec) (*pb.BundleProcess, error) {
	bp := &pb.BundleProcess{
		Uid: spec.UID, Gid: spec.GID, AdditionalGids: spec.AdditionalGids,
		NoNewPrivileges: spec.NoNewPrivileges, Init: spec.Init, Env: spec.Env,
	}
	if spec.Umask != nil {
		bp.HasUmask, bp.Umask = true, *spec.Umask
	}
	if c := spec.Container; c != nil {
		bp.Container = &pb.ContainerConfig{Namespaces: c.Namespaces, MaskedPaths: c.MaskedPaths, ReadonlyPaths: c.ReadonlyPaths}
		for _, m := range c.Mounts {
			bp.Container.Mounts = append(bp.Container.Mounts, &pb.ContainerMount{Destination: m.Destination, Type: m.Type, Source: m.Source, Options: m.Options})
		}
	}
	if c := spec.Capabilities; c != nil {
		bp.HasCapabilities = true
		for _, x := range []struct {
			names []string
			mask  *uint64
		}{{c.Bounding, &bp.CapBounding}, {c.Effective, &bp.CapEffective}, {c.Permitted, &bp.CapPermitted},
			{c.Inheritable, &bp.CapInheritable}, {c.Ambient, &bp.CapAmbient}} {
			m, err := capMask(x.names)
			if err != nil {
				return nil, errdefs.New(errdefs.KindInvalidArgument, err)
			}
			*x.mask = m
		}
	}
	for _, l := range spec.Rlimits {
		res, ok := RlimitTypes[l.Type]
		if !ok {
			return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "unknown rlimit %q", l.Type)
		}
		bp.Rlimits = append(bp.Rlimits, &pb.Rlimit{Resource: int32(res), Soft: l.Soft, Hard: l.Hard})
	}
	return bp, nil
}

// lookup finds a process StartProcess started in sandbox name.
func (r *Runtime) lookup(name, id string) (*liveProc, error) {
	sbID, _, err := r.dir(name)
	if err != nil {
		return nil, err
	}
	return r.live().get(sbID, id)
}

// errExited says a process has exited already.
func errExited(id string) error {
	return errdefs.WithReason(errdefs.KindNotFound, errdefs.ReasonProcess, fmt.Errorf("process %s has already exited", id))
}

// sendControl hands m to a running process's stream.
func (p *liveProc) sendControl(ctx context.Context, m *pb.ExecInput) error {
	select {
	case <-p.done:
		return errExited(p.id)
	default:
	}
	select {
	case p.control <- m:
		return nil
	case <-p.done:
		return errExited(p.id)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SignalProcess sends sig (1..64) to process id of sandbox name (to its pid, not
// its children), or with all to every process of the guest but the agent
// (id is then ignored). A process that has exited is not_found.
func (r *Runtime) SignalProcess(ctx context.Context, name, id string, sig int, all bool) error {
	if sig < 1 || sig > 64 {
		return errdefs.Errorf(errdefs.KindInvalidArgument, "signal %d: must be between 1 and 64", sig)
	}
	if all {
		err := r.withAgent(ctx, name, func(c *agentapi.Client) error {
			_, err := c.Agent.ProcSignal(ctx, &pb.ProcSignalRequest{All: true, Signal: int32(sig)})
			return err
		})
		if err == nil {
			r.auditOp(name, "exec.signaled", map[string]any{"all": true, "signal": sig})
		}
		return err
	}
	p, err := r.lookup(name, id)
	if err != nil {
		return err
	}
	if err := p.sendControl(ctx, &pb.ExecInput{Msg: &pb.ExecInput_Signal{Signal: int32(sig)}}); err != nil {
		return err
	}
	r.auditOp(name, "exec.signaled", map[string]any{"process_id": id, "signal": sig})
	return nil
}

// WaitProcess waits until process id has exited and all its output was written,
// and returns its status (Exit set). A process whose sandbox went away
// (Down, a VM crash) returns an error of kind transport or guest.
func (r *Runtime) WaitProcess(ctx context.Context, name, id string) (*ProcessStatus, error) {
	p, err := r.lookup(name, id)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if p.err != nil {
		return p.status(), p.err
	}
	return p.status(), nil
}

// ProcessState returns a process's status without waiting.
func (r *Runtime) ProcessState(name, id string) (*ProcessStatus, error) {
	p, err := r.lookup(name, id)
	if err != nil {
		return nil, err
	}
	return p.status(), nil
}

// CloseStdin closes process id's stdin (EOF for it; ^D on a terminal).
func (r *Runtime) CloseStdin(ctx context.Context, name, id string) error {
	p, err := r.lookup(name, id)
	if err != nil {
		return err
	}
	return p.sendControl(ctx, &pb.ExecInput{Msg: &pb.ExecInput_CloseStdin{CloseStdin: true}})
}

// ResizePTY sets the terminal size of process id (started with Terminal).
func (r *Runtime) ResizePTY(ctx context.Context, name, id string, rows, cols uint32) error {
	if rows == 0 || cols == 0 || rows > 0xffff || cols > 0xffff {
		return errdefs.Errorf(errdefs.KindInvalidArgument, "terminal size %dx%d: want 1..65535 each", cols, rows)
	}
	p, err := r.lookup(name, id)
	if err != nil {
		return err
	}
	return p.sendControl(ctx, &pb.ExecInput{Msg: &pb.ExecInput_Resize{Resize: &pb.Resize{Rows: rows, Cols: cols}}})
}

// DeleteProcess forgets an exited process and returns its last status; a
// running one is refused (failed_precondition): signal it first.
func (r *Runtime) DeleteProcess(ctx context.Context, name, id string) (*ProcessStatus, error) {
	p, err := r.lookup(name, id)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	default:
		return nil, errdefs.Errorf(errdefs.KindFailedPrecondition, "process %s is still running; signal it and wait first", id)
	}
	t := r.live()
	t.mu.Lock()
	if t.procs[p.sandboxID][id] == p {
		delete(t.procs[p.sandboxID], id)
	}
	t.mu.Unlock()
	return p.status(), nil
}

// Pids lists the processes of a guest but the agent and kernel threads
// (for a bundle sandbox: the container's processes).
func (r *Runtime) Pids(ctx context.Context, name string) (out []GuestProcess, err error) {
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		resp, err := c.Agent.Pids(ctx, &pb.PidsRequest{})
		if err != nil {
			return err
		}
		if len(resp.Pids) > agentapi.MaxPids {
			return errdefs.Errorf(errdefs.KindGuest, "agent protocol: %d processes exceed the cap of %d", len(resp.Pids), agentapi.MaxPids)
		}
		for _, g := range resp.Pids {
			if g.Pid <= 0 || len(g.Command) > 64 || len(g.Id) > agentapi.MaxProcessIDBytes {
				return errdefs.Errorf(errdefs.KindGuest, "agent protocol: malformed process entry")
			}
			out = append(out, GuestProcess{Pid: g.Pid, PPid: g.Ppid, Command: g.Command, ID: g.Id})
		}
		return nil
	})
	return out, err
}

// dropProcesses ends and forgets the processes StartProcess started in a
// sandbox (Down calls it).
func (r *Runtime) dropProcesses(sandboxID string) { r.live().drop(sandboxID) }
