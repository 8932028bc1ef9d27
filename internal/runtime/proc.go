package runtime

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// ProcInfo describes a background process (the runtime's own type; the
// agent's protobuf messages stay below the runtime).
type ProcInfo struct {
	Handle  string
	Pid     int32
	Argv    []string
	State   string    // "running" or "exited"
	Exit    *ProcExit // set once exited
	Started time.Time
	Exited  time.Time // zero while running
	// Bytes produced on each stream, and those no longer retained.
	StdoutBytes, StderrBytes     int64
	StdoutDropped, StderrDropped int64
	StdinOpen                    bool
}

// ProcExit is how a process ended: its exit code, or the signal that
// killed it.
type ProcExit struct {
	Code, Signal int32
}

// ProcWaitResult is how a wait ended: the exit, or (no-follow) the
// process still running.
type ProcWaitResult struct {
	Exit    *ProcExit
	Running *ProcInfo
}

// OutputGap reports bytes of one stream (1 stdout, 2 stderr) that left the
// bounded buffer before the reader got them.
type OutputGap struct {
	Fd   int32
	Lost int64
}

// GuestStats are a guest's metrics.
type GuestStats struct {
	MemTotalBytes, MemAvailableBytes uint64
	Load1, Load5, Load15             float64
	Processes                        uint32
	UptimeSeconds                    float64
	DiskTotalBytes, DiskFreeBytes    uint64
	// CPU time of the whole guest since boot, in microseconds.
	CPUUserUsec, CPUSystemUsec uint64
}

func procExit(e *pb.Exit) *ProcExit {
	if e == nil {
		return nil
	}
	return &ProcExit{Code: e.Code, Signal: e.Signal}
}

func procInfo(p *pb.ProcInfo) *ProcInfo {
	if p == nil {
		return nil
	}
	out := &ProcInfo{Handle: p.Handle, Pid: p.Pid, Argv: p.Argv, State: p.State, Exit: procExit(p.Exit),
		Started: time.Unix(0, p.StartedUnixNano), StdoutBytes: p.StdoutBytes, StderrBytes: p.StderrBytes,
		StdoutDropped: p.StdoutDropped, StderrDropped: p.StderrDropped, StdinOpen: p.StdinOpen}
	if p.ExitedUnixNano != 0 {
		out.Exited = time.Unix(0, p.ExitedUnixNano)
	}
	return out
}

// ProcStartOptions describe a background process.
type ProcStartOptions struct {
	Argv       []string
	Env        map[string]string
	Cwd        string
	Stdin      bool // keep a stdin pipe open for ProcStdin
	Entrypoint bool // run the image's declared command (argv appended)
}

// sandboxEnv is the sandbox's default environment (set at `up`) merged
// with env.
func (r *Runtime) sandboxEnv(nameOrID string, env map[string]string) (map[string]string, error) {
	for k := range env {
		if !validEnvKey(k) {
			return nil, fmt.Errorf("invalid environment variable name %q", k)
		}
	}
	out := map[string]string{}
	var senv map[string]string
	if _, dir, err := r.dir(nameOrID); err == nil {
		sandbox.ReadJSON(filepath.Join(dir, envFile), &out)
		if senv, _, err = r.secretEnv(dir); err != nil {
			return nil, err
		}
	}
	for k, v := range env {
		out[k] = v
	}
	for k, v := range senv {
		out[k] = v
	}
	return out, nil
}

// ProcStart starts a background process and returns its handle and info.
// The returned id names its exec.started audit entry.
func (r *Runtime) ProcStart(ctx context.Context, name string, o ProcStartOptions) (info *ProcInfo, auditID string, err error) {
	env, err := r.sandboxEnv(name, o.Env)
	if err != nil {
		return nil, "", err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		pi, err := c.Agent.ProcStart(ctx, &pb.ProcStartRequest{Start: &pb.ExecStart{
			Argv: o.Argv, Env: env, Cwd: o.Cwd, Stdin: o.Stdin, Entrypoint: o.Entrypoint}})
		info = procInfo(pi)
		return err
	})
	if err == nil {
		ran := o.Argv
		if st, err := r.Get(name); err == nil {
			ran = ranArgv(st.Image, o.Argv, o.Entrypoint)
		}
		fields := evidence.RedactInvocation(ran, env).Fields()
		fields["background"] = true
		fields["handle"] = info.Handle
		auditID, err = r.auditOpID(name, evidence.KindExecStarted, fields)
	}
	return info, auditID, err
}

// ProcList lists the background processes of a sandbox.
func (r *Runtime) ProcList(ctx context.Context, name string) (procs []*ProcInfo, err error) {
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		resp, err := c.Agent.ProcList(ctx, &pb.ProcListRequest{})
		if err != nil {
			return err
		}
		if len(resp.Procs) > agentapi.MaxProcs+agentapi.MaxExitedProcs {
			return fmt.Errorf("agent protocol: %d processes exceed the caps", len(resp.Procs))
		}
		for _, p := range resp.Procs {
			procs = append(procs, procInfo(p))
		}
		return nil
	})
	return procs, err
}

// ProcWait streams a background process's output from its start and
// returns how it ended; with noFollow it returns at once with the process
// still running (Running set). gap, when set, hears of output that left
// the bounded buffer before it was read.
func (r *Runtime) ProcWait(ctx context.Context, name, handle string, noFollow bool, stdout, stderr io.Writer, gap func(OutputGap)) (res *ProcWaitResult, err error) {
	// A background process's output is captured: its secrets are redacted.
	if red := r.Redactor(name); !red.Empty() {
		ow, ew := red.Writer(stdout), red.Writer(stderr)
		defer ow.Flush()
		defer ew.Flush()
		if stdout != nil {
			stdout = ow
		}
		if stderr != nil {
			stderr = ew
		}
	}
	var pgap func(*pb.OutputGap)
	if gap != nil {
		pgap = func(g *pb.OutputGap) { gap(OutputGap{Fd: g.Fd, Lost: g.Lost}) }
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		last, err := c.ProcWait(ctx, &pb.ProcWaitRequest{Handle: handle, NoFollow: noFollow}, stdout, stderr, pgap)
		if err == nil {
			res = &ProcWaitResult{Exit: procExit(last.GetExit()), Running: procInfo(last.GetRunning())}
		}
		return err
	})
	return res, err
}

// ProcSignal signals a background process (and its process group).
func (r *Runtime) ProcSignal(ctx context.Context, name, handle string, sig int) (info *ProcInfo, err error) {
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		pi, err := c.Agent.ProcSignal(ctx, &pb.ProcSignalRequest{Handle: handle, Signal: int32(sig)})
		info = procInfo(pi)
		return err
	})
	if err == nil {
		err = r.auditOp(name, "exec.signaled", map[string]any{"handle": handle, "signal": sig})
	}
	return info, err
}

// ProcStdin copies rd to a background process's stdin; closeAfter closes
// it at EOF.
func (r *Runtime) ProcStdin(ctx context.Context, name, handle string, rd io.Reader, closeAfter bool) (n int64, err error) {
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		n, err = c.ProcStdin(ctx, handle, rd, closeAfter)
		return err
	})
	return n, err
}

// Stats reads guest metrics.
func (r *Runtime) Stats(ctx context.Context, name string) (st *GuestStats, err error) {
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		s, err := c.Agent.Stats(ctx, &pb.StatsRequest{})
		if err == nil {
			st = &GuestStats{MemTotalBytes: s.MemTotalBytes, MemAvailableBytes: s.MemAvailableBytes,
				Load1: s.Load1, Load5: s.Load5, Load15: s.Load15, Processes: s.Processes,
				UptimeSeconds: s.UptimeSeconds, DiskTotalBytes: s.DiskTotalBytes, DiskFreeBytes: s.DiskFreeBytes,
				CPUUserUsec: s.CpuUserUsec, CPUSystemUsec: s.CpuSystemUsec}
		}
		return err
	})
	return st, err
}

// ConsoleOptions describe an interactive terminal session.
type ConsoleOptions struct {
	Argv       []string
	Env        map[string]string
	Rows, Cols uint32
	Stdin      io.Reader
	Stdout     io.Writer
	// Control carries resizes (and signals) to the session.
	Control <-chan *pb.ExecInput
}

// Console runs Argv on a guest PTY until it exits or ctx ends (a detach).
// It is refused unless the admitted plan allows a console (the run
// profile allows it and the image is not sealed); the agent, told at
// boot, refuses it as well.
func (r *Runtime) Console(ctx context.Context, name string, o ConsoleOptions) (res *agentapi.ExecResult, err error) {
	if err := r.checkConsole(name); err != nil {
		return nil, err
	}
	env, err := r.sandboxEnv(name, o.Env)
	if err != nil {
		return nil, err
	}
	fields := evidence.RedactInvocation(o.Argv, env).Fields()
	if err := r.auditOp(name, evidence.KindConsoleOpened, fields); err != nil {
		return nil, err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		res, err = c.Exec(ctx, agentapi.ExecRequest{
			Argv: o.Argv, Env: env, TTY: true, Rows: o.Rows, Cols: o.Cols,
			Stdin: o.Stdin, Stdout: o.Stdout, Stderr: o.Stdout, Control: o.Control,
		})
		return err
	})
	closed := map[string]any{"outcome": "exited"}
	switch {
	case res != nil:
		closed["exit_code"] = res.ExitCode
	case ctx.Err() != nil:
		closed["outcome"] = "detached"
	default:
		closed["outcome"] = execFailureTag(err, ctx)
	}
	r.auditOp(name, evidence.KindConsoleClosed, closed)
	return res, err
}
