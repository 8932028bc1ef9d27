package runtime

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

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
	if _, dir, err := r.dir(nameOrID); err == nil {
		sandbox.ReadJSON(filepath.Join(dir, envFile), &out)
	}
	for k, v := range env {
		out[k] = v
	}
	return out, nil
}

// ProcStart starts a background process and returns its handle and info.
// The returned id names its exec.started audit entry.
func (r *Runtime) ProcStart(ctx context.Context, name string, o ProcStartOptions) (info *pb.ProcInfo, auditID string, err error) {
	env, err := r.sandboxEnv(name, o.Env)
	if err != nil {
		return nil, "", err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		info, err = c.Agent.ProcStart(ctx, &pb.ProcStartRequest{Start: &pb.ExecStart{
			Argv: o.Argv, Env: env, Cwd: o.Cwd, Stdin: o.Stdin, Entrypoint: o.Entrypoint}})
		return err
	})
	if err == nil {
		fields := evidence.RedactInvocation(o.Argv, env).Fields()
		fields["background"] = true
		fields["handle"] = info.Handle
		auditID, err = r.auditOpID(name, evidence.KindExecStarted, fields)
	}
	return info, auditID, err
}

// ProcList lists the background processes of a sandbox.
func (r *Runtime) ProcList(ctx context.Context, name string) (procs []*pb.ProcInfo, err error) {
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		resp, err := c.Agent.ProcList(ctx, &pb.ProcListRequest{})
		if err != nil {
			return err
		}
		if len(resp.Procs) > agentapi.MaxProcs+agentapi.MaxExitedProcs {
			return fmt.Errorf("agent protocol: %d processes exceed the caps", len(resp.Procs))
		}
		procs = resp.Procs
		return nil
	})
	return procs, err
}

// ProcWait streams a background process's output from its start (or the
// given offsets) and returns how it ended; with noFollow it returns at once
// with the process still running (Running set).
func (r *Runtime) ProcWait(ctx context.Context, name string, req *pb.ProcWaitRequest, stdout, stderr io.Writer, gap func(*pb.OutputGap)) (last *pb.ProcOutput, err error) {
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		last, err = c.ProcWait(ctx, req, stdout, stderr, gap)
		return err
	})
	return last, err
}

// ProcSignal signals a background process (and its process group).
func (r *Runtime) ProcSignal(ctx context.Context, name, handle string, sig int) (info *pb.ProcInfo, err error) {
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		info, err = c.Agent.ProcSignal(ctx, &pb.ProcSignalRequest{Handle: handle, Signal: int32(sig)})
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
func (r *Runtime) Stats(ctx context.Context, name string) (st *pb.StatsResponse, err error) {
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		st, err = c.Agent.Stats(ctx, &pb.StatsRequest{})
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
