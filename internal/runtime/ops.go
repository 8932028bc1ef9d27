package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// SupervisorCommand is the hidden mvmctl subcommand that runs a supervisor.
const SupervisorCommand = "__supervise"

// Connect opens an agent client to a running sandbox.
func (r *Runtime) Connect(ctx context.Context, nameOrID string) (*agentapi.Client, *sandbox.State, error) {
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, nil, err
	}
	st, err := r.state(dir)
	if err != nil {
		return nil, nil, err
	}
	if st.Status != sandbox.Running {
		why := st.Status
		if st.Reason != "" {
			why += ": " + st.Reason
		}
		return nil, st, fmt.Errorf("%w: %s is %s", ErrNotRunning, st.Name, why)
	}
	c, err := agentapi.Dial(ctx, func(ctx context.Context) (net.Conn, error) {
		return sandbox.DialIn(ctx, dir, sandbox.AgentSocket)
	})
	if err != nil {
		return nil, st, fmt.Errorf("connect to %s: %w", st.Name, err)
	}
	return c, st, nil
}

// ExecOptions describe a command to run in a sandbox.
type ExecOptions struct {
	Argv []string
	Env  map[string]string
	Cwd  string
	TTY  bool
	// Entrypoint runs the image's declared command (an OCI image's
	// Entrypoint and Cmd) with Argv appended.
	Entrypoint bool
	// Console marks a console session (`console --command`): like TTY, it
	// needs the admitted plan to allow a console.
	Console    bool
	Rows, Cols uint32
	Stdin      io.Reader
	Stdout     io.Writer
	Stderr     io.Writer
	// Timeout kills the command after this long; Exec then returns an
	// error wrapping ErrTimeout. The deadline is kept on the host (the
	// stream is cancelled), so a guest can neither stretch nor race it.
	Timeout time.Duration
}

// ExecResult is how a command ended, with its evidence.
type ExecResult struct {
	agentapi.ExecResult
	// AuditID names the exec.finished entry of the audit chain.
	AuditID string
	// Receipt is the signed receipt of the run (canonical JSON).
	Receipt []byte
	// ReceiptID is the receipt's id (a UUID), also named by the
	// exec.finished audit entry.
	ReceiptID string
}

// Exec runs a command in a running sandbox and waits for it. The run is
// recorded in the audit chain (exec.started, exec.finished) and a signed
// receipt is returned; neither holds argv, env values or stdio bytes.
func (r *Runtime) Exec(ctx context.Context, nameOrID string, o ExecOptions) (*ExecResult, error) {
	for k := range o.Env {
		if !validEnvKey(k) {
			return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "invalid environment variable name %q", k)
		}
	}
	if o.TTY || o.Console {
		if err := r.checkConsole(nameOrID); err != nil {
			return nil, err
		}
	}
	c, st, err := r.Connect(ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	env := map[string]string{}
	dir := r.Layout.Dir(st.ID)
	sandbox.ReadJSON(filepath.Join(dir, envFile), &env)
	for k, v := range o.Env {
		env[k] = v
	}
	senv, red, err := r.secretEnv(dir)
	if err != nil {
		return nil, err
	}
	// Evidence sees secrets by name only: not even a hash of the value.
	evEnv := map[string]string{}
	for k, v := range env {
		evEnv[k] = v
	}
	for k, v := range senv {
		env[k] = v
		evEnv[k] = "[secret]"
	}
	// Output that is captured, not a terminal's raw stream, is redacted.
	if !red.Empty() && !o.TTY {
		ow, ew := red.Writer(o.Stdout), red.Writer(o.Stderr)
		defer ow.Flush()
		defer ew.Flush()
		if o.Stdout != nil {
			o.Stdout = ow
		}
		if o.Stderr != nil {
			o.Stderr = ew
		}
	}
	w, err := r.witness()
	if err != nil {
		return nil, err
	}
	// evidence names the command actually run: with Entrypoint, the
	// image's declared command (as built) before Argv
	ran := ranArgv(st.Image, o.Argv, o.Entrypoint)
	inv := evidence.RedactInvocation(ran, evEnv)
	irHash := r.workloadHash(st.ID)
	invFields := func() map[string]any {
		f := inv.Fields()
		if irHash != "" {
			f["workload_ir_sha256"] = irHash
		}
		return f
	}
	if _, err := w.chain.Append(evidence.KindExecStarted, st.ID, invFields()); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	inH, outH, errH := evidence.NewHasher(), evidence.NewHasher(), evidence.NewHasher()
	req := agentapi.ExecRequest{
		Argv: o.Argv, Env: env, Cwd: o.Cwd, TTY: o.TTY, Rows: o.Rows, Cols: o.Cols, Entrypoint: o.Entrypoint,
		Stdout: teeWriter(o.Stdout, outH), Stderr: teeWriter(o.Stderr, errH),
	}
	if o.Stdin != nil {
		req.Stdin = io.TeeReader(o.Stdin, inH)
	}
	started := time.Now()
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	var timedOut atomic.Bool
	if o.Timeout > 0 {
		t := time.AfterFunc(o.Timeout, func() { timedOut.Store(true); cancel() })
		defer t.Stop()
	}
	res, err := c.Exec(ectx, req)
	if err != nil {
		fields := invFields()
		fields["outcome"] = execFailureTag(err, ctx)
		if timedOut.Load() {
			fields["outcome"] = "timeout"
			err = fmt.Errorf("%w after %s", ErrTimeout, o.Timeout)
		}
		w.chain.Append("exec.failed", st.ID, fields)
		return nil, err
	}
	receiptID := evidence.NewID()
	receipt, rec, err := evidence.RecordRun(w.chain, w.signer, evidence.RunRecord{
		ReceiptID: receiptID, SandboxID: st.ID, ImageDigest: st.Image.Digest, OCIDigest: st.Image.OCIDigest, KernelDigest: kernelDigest(dir),
		PlanHash: planHash(dir), Backend: backendOf(dir), WorkloadIRHash: irHash, Mounts: receiptMounts(dir), Argv: ran, Env: evEnv,
		Stdin: inH.Digest(), Stdout: outH.Digest(), Stderr: errH.Digest(),
		ExitCode: res.ExitCode, StartedAt: started, FinishedAt: time.Now(),
	})
	if err != nil {
		return nil, fmt.Errorf("record run: %w", err)
	}
	return &ExecResult{ExecResult: *res, AuditID: auditID(rec), Receipt: receipt, ReceiptID: receiptID}, nil
}

// ranArgv is the argv a process runs: argv, or with entrypoint the
// image's declared command followed by argv (what the agent runs).
func ranArgv(img sandbox.ImageRef, argv []string, entrypoint bool) []string {
	if !entrypoint {
		return argv
	}
	return append(append([]string(nil), img.Command...), argv...)
}

func teeWriter(w io.Writer, h io.Writer) io.Writer {
	if w == nil {
		return h
	}
	return io.MultiWriter(w, h)
}

// execFailureTag is the audit outcome of an exec that could not run,
// from the error's kind (the one error model).
func execFailureTag(err error, ctx context.Context) string {
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return "timeout"
	case ctx.Err() != nil:
		return "cancelled"
	}
	switch errdefs.KindOf(err) {
	case errdefs.KindNotFound:
		return "not_found"
	case errdefs.KindPermissionDenied:
		return "permission_denied"
	case errdefs.KindRefused:
		return "refused_by_profile"
	}
	return "error"
}

// backendOf is the backend a sandbox was created with (qemu for sandboxes
// created before it was recorded).
func backendOf(dir string) string {
	var spec sandbox.Spec
	if sandbox.ReadJSON(filepath.Join(dir, sandbox.SpecFile), &spec) != nil || spec.Backend == "" {
		return "qemu"
	}
	return spec.Backend
}

func kernelDigest(dir string) string {
	var spec sandbox.Spec
	if sandbox.ReadJSON(filepath.Join(dir, sandbox.SpecFile), &spec) != nil {
		return ""
	}
	return spec.Kernel
}

// state reads a sandbox's state and corrects it when its supervisor has
// died without saying so (SIGKILL, host crash).
func (r *Runtime) state(dir string) (*sandbox.State, error) {
	st, err := sandbox.ReadState(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s has no state (it is being removed)", ErrNotFound, filepath.Base(dir))
		}
		return nil, err
	}
	st.Attachments = readAttachments(dir)
	var spec sandbox.Spec
	if sandbox.ReadJSON(filepath.Join(dir, sandbox.SpecFile), &spec) == nil {
		st.Labels, st.RootDir = spec.Labels, spec.RootDir
	}
	if !supervisorAlive(st.SupervisorPID, dir) {
		reconcileDead(dir, st)
	}
	if suspendedState(dir, st) {
		return st, nil
	}
	if sandbox.Active(st.Status) && !supervisorAlive(st.SupervisorPID, dir) {
		st.Status = sandbox.Failed
		st.Reason = fmt.Sprintf("supervisor (pid %d) died", st.SupervisorPID)
		if sandbox.ProcessAlive(st.VMMPID, sandbox.VMMTag(st.ID)) {
			st.Reason += "; its VMM is still running"
		}
	}
	if sandbox.Active(st.Status) && isPoolMember(dir) {
		// Idle in a warm pool: usable only once claimed (see pool.go).
		if st.Status != sandbox.Running {
			st.Reason = st.Status
		}
		st.Status = sandbox.Pooled
	}
	return st, nil
}

// Get returns one sandbox's state.
func (r *Runtime) Get(nameOrID string) (*sandbox.State, error) {
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, err
	}
	return r.state(dir)
}

// List returns sandboxes, oldest first; all includes stopped and failed.
func (r *Runtime) List(all bool) ([]*sandbox.State, error) {
	ids, err := r.Layout.IDs()
	if err != nil {
		return nil, err
	}
	var out []*sandbox.State
	for _, id := range ids {
		st, err := r.state(r.Layout.Dir(id))
		if err != nil {
			continue // being created or removed
		}
		if all || sandbox.Active(st.Status) {
			out = append(out, st)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// Down stops a sandbox and removes its state. A sandbox whose supervisor
// or VMM was killed is cleaned up all the same.
func (r *Runtime) Down(ctx context.Context, nameOrID string) error {
	id, dir, err := r.dir(nameOrID)
	if err != nil {
		return err
	}
	// Not in the middle of a pause, resume or save: wait for it. The
	// lock goes with the directory.
	unlock, err := lockLifecycle(ctx, dir, nameOrID, "down")
	if errors.Is(err, ErrNotFound) { // removed meanwhile, or a name left dangling
		r.Layout.Release(nameOrID, id)
		return nil
	}
	if err != nil {
		return err
	}
	defer unlock()
	st, _ := sandbox.ReadState(dir)
	r.dropProcesses(id)
	if wi := workloadOf(dir); wi != nil && len(wi.BeforeStop) > 0 && st != nil && st.Status == sandbox.Running {
		r.runBeforeStop(ctx, id, wi)
	}
	if st != nil && supervisorAlive(st.SupervisorPID, dir) {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		_, err := sandbox.Control(cctx, dir, sandbox.Request{Op: "stop"})
		cancel()
		if err == nil {
			waitSupervisorGone(st.SupervisorPID, dir, 5*time.Second)
		} else {
			// No control socket: the supervisor may be tearing the
			// sandbox down on its own (a transient one whose holder
			// went away). Let it finish and audit the stop; a hung one
			// is killed below.
			waitSupervisorGone(st.SupervisorPID, dir, 2*time.Second)
		}
		if supervisorAlive(st.SupervisorPID, dir) {
			syscall.Kill(st.SupervisorPID, syscall.SIGKILL)
			waitSupervisorGone(st.SupervisorPID, dir, 5*time.Second)
		}
	}
	if st != nil && sandbox.ProcessAlive(st.VMMPID, sandbox.VMMTag(id)) {
		syscall.Kill(st.VMMPID, syscall.SIGKILL)
		waitGone(st.VMMPID, sandbox.VMMTag(id), 5*time.Second)
	}
	name := id
	if st != nil {
		name = st.Name
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	r.Layout.Release(name, id)
	if name == id && nameOrID != id {
		r.Layout.Release(nameOrID, id)
	}
	return nil
}

func waitGone(pid int, tag string, d time.Duration) {
	deadline := time.Now().Add(d)
	for sandbox.ProcessAlive(pid, tag) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// Control sends a lifecycle request (pause, resume, status) to a sandbox.
func (r *Runtime) Control(ctx context.Context, nameOrID, op string) (*sandbox.State, error) {
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, err
	}
	resp, err := sandbox.Control(ctx, dir, sandbox.Request{Op: op})
	if err != nil {
		return nil, errdefs.New(errdefs.KindTransport, fmt.Errorf("%s %s: %w (is its supervisor alive? `mvmctl ls` shows its state)", op, nameOrID, err))
	}
	if !resp.OK {
		// The supervisor could not do it in the sandbox's present state
		// (a VMM that refused to stop or continue).
		return nil, errdefs.Errorf(errdefs.KindFailedPrecondition, "%s %s: %s", op, nameOrID, resp.Error)
	}
	return resp.State, nil
}

// Dir returns the state directory of a sandbox (for logs).
func (r *Runtime) Dir(nameOrID string) (string, error) {
	_, dir, err := r.dir(nameOrID)
	return dir, err
}
