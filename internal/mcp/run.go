package mcp

// run_command and run_code: in a sandbox of this server, or in a
// transient one.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

type execSpec struct {
	argv      []string
	cwd       string
	stdin     string
	timeout   time.Duration
	template  string // transient only
	memoryMiB int    // transient only
}

func callTimeout(d Duration) (time.Duration, error) {
	t := d.D()
	if t == 0 {
		return DefaultCallTimeout, nil
	}
	if t > MaxCallTimeout {
		return 0, fmt.Errorf("timeout %s: at most %s", t, MaxCallTimeout)
	}
	return t, nil
}

func (s *Server) runCommand(ctx context.Context, a RunCommandArgs) (RunResult, string, error) {
	var zero RunResult
	var argv []string
	switch {
	case a.Command != "" && len(a.Argv) > 0:
		return zero, "", errors.New("give command (a shell line) or argv (a list), not both")
	case a.Command != "":
		argv = []string{"sh", "-c", a.Command}
	case len(a.Argv) > 0:
		if a.Argv[0] == "" {
			return zero, "", errors.New("argv[0] must name a program")
		}
		argv = a.Argv
	default:
		return zero, "", errors.New("give command (a shell line) or argv (a list)")
	}
	if a.Sandbox != "" && (a.Template != "" || a.MemoryMiB != 0) {
		return zero, "", errors.New("template and memory_mib apply only without sandbox (to the fresh sandbox); a sandbox's own were set by sandbox_create")
	}
	timeout, err := callTimeout(a.Timeout)
	if err != nil {
		return zero, "", err
	}
	return s.execute(ctx, a.Sandbox, execSpec{argv: argv, cwd: a.Cwd, stdin: a.Stdin, timeout: timeout,
		template: a.Template, memoryMiB: a.MemoryMiB})
}

// languages maps run_code's language to its interpreter and the template
// of a transient sandbox for it.
var languages = map[string]struct {
	argv     func(code string) []string
	template string
}{
	"python": {func(c string) []string { return []string{"python3", "-c", c} }, "python"},
	"node":   {func(c string) []string { return []string{"node", "-e", c} }, "node"},
	"shell":  {func(c string) []string { return []string{"sh", "-c", c} }, ""},
}

func (s *Server) runCode(ctx context.Context, a RunCodeArgs) (RunResult, string, error) {
	var zero RunResult
	lang, ok := languages[a.Language]
	if !ok {
		return zero, "", fmt.Errorf("language %q: want python, node or shell", a.Language)
	}
	if len(a.Code) > MaxCodeBytes {
		return zero, "", fmt.Errorf("code is %d bytes, more than %d: write it with files_write and run it with run_command", len(a.Code), MaxCodeBytes)
	}
	if strings.IndexByte(a.Code, 0) >= 0 {
		return zero, "", errors.New("code contains a NUL byte")
	}
	if a.Sandbox != "" && a.MemoryMiB != 0 {
		return zero, "", errors.New("memory_mib applies only without sandbox (to the fresh sandbox)")
	}
	timeout, err := callTimeout(a.Timeout)
	if err != nil {
		return zero, "", err
	}
	return s.execute(ctx, a.Sandbox, execSpec{argv: lang.argv(a.Code), stdin: a.Stdin, timeout: timeout,
		template: lang.template, memoryMiB: a.MemoryMiB})
}

// execute runs argv in the named sandbox, or in a transient one.
func (s *Server) execute(ctx context.Context, handle string, e execSpec) (RunResult, string, error) {
	if len(e.stdin) > MaxStdinBytes {
		return RunResult{}, "", fmt.Errorf("stdin is %d bytes, more than %d", len(e.stdin), MaxStdinBytes)
	}
	if handle == "" {
		return s.executeTransient(ctx, e)
	}
	b, err := s.acquire(handle)
	if err != nil {
		return RunResult{}, "", err
	}
	defer s.release(b)
	res := RunResult{Sandbox: b.handle, SandboxID: b.id}
	out, errb := newCapBuffer(OutputCapBytes), newCapBuffer(OutputCapBytes)
	t0 := time.Now()
	exit, err := s.rt.Exec(ctx, b.id, execOptions(e, out, errb))
	res.DurationMS = time.Since(t0).Milliseconds()
	if err := finishRun(ctx, e, &res, out, errb, exit, err); err != nil {
		return RunResult{}, "", err
	}
	return res, res.Text(), nil
}

// executeTransient runs argv in a sandbox made for this call, through the
// runtime's one-shot run (boot, exec, teardown in the runtime's order).
// The sandbox holds a place under the session caps while it runs.
func (s *Server) executeTransient(ctx context.Context, e execSpec) (RunResult, string, error) {
	mem, err := s.sizing(e.template, e.memoryMiB)
	if err != nil {
		return RunResult{}, "", err
	}
	free, err := s.reserve(mem)
	if err != nil {
		return RunResult{}, "", err
	}
	defer free()
	out, errb := newCapBuffer(OutputCapBytes), newCapBuffer(OutputCapBytes)
	rr, err := s.rt.Run(ctx, runtime.RunOptions{
		Up: runtime.UpOptions{
			Name: "mcp-run-" + sandbox.NewID()[:8], Image: e.template, MemoryMiB: mem,
			TTL: s.lim.SessionMax, RunProfile: string(Profile), NoBuildDir: true,
		},
		Exec: execOptions(e, out, errb),
	})
	if rr == nil { // the sandbox did not boot
		if err == nil {
			err = errors.New("the runtime returned no result")
		}
		return RunResult{}, "", toolError(op{boot: true, template: e.template}, err)
	}
	res := RunResult{Sandbox: rr.Name, SandboxID: rr.SandboxID, Transient: true,
		BootMS: rr.BootTime.Milliseconds(), DurationMS: rr.ExecTime.Milliseconds()}
	if err := finishRun(ctx, e, &res, out, errb, rr.Exit, err); err != nil {
		return RunResult{}, "", err
	}
	return res, res.Text(), nil
}

// execOptions runs e with its output captured under the per-stream cap;
// the runtime enforces the timeout (and records it as such).
func execOptions(e execSpec, out, errb *capBuffer) runtime.ExecOptions {
	o := runtime.ExecOptions{Argv: e.argv, Cwd: e.cwd, Stdout: out, Stderr: errb, Timeout: e.timeout}
	if e.stdin != "" {
		o.Stdin = strings.NewReader(e.stdin)
	}
	return o
}

// finishRun shapes one command's result; a timeout is a result
// (timed_out, exit_code 124), not an error.
func finishRun(ctx context.Context, e execSpec, res *RunResult, out, errb *capBuffer, exit *runtime.ExecResult, err error) error {
	shapeRun(res, out, errb)
	if err != nil {
		if errors.Is(err, runtime.ErrTimeout) {
			res.TimedOut, res.ExitCode = true, 124
			return nil
		}
		if ctx.Err() != nil {
			return errors.New("cancelled; the command was killed")
		}
		return toolError(op{prog: e.argv[0]}, err)
	}
	if exit == nil {
		return errors.New("could not run the command: the runtime returned no exit status")
	}
	res.ExitCode, res.Signal = exit.ExitCode, exit.Signal
	res.AuditID = exit.AuditID
	if len(exit.Receipt) > 0 && json.Valid(exit.Receipt) {
		res.Receipt = json.RawMessage(exit.Receipt)
	}
	return nil
}
