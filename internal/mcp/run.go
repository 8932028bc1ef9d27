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

	"github.com/mvm-sandbox/mvm/internal/agentapi"
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
	if err := s.execIn(ctx, b.id, e, &res); err != nil {
		return RunResult{}, "", err
	}
	return res, res.Text(), nil
}

func (s *Server) executeTransient(ctx context.Context, e execSpec) (RunResult, string, error) {
	if err := checkTemplate(e.template); err != nil {
		return RunResult{}, "", err
	}
	mem, err := s.memory(e.memoryMiB, e.template)
	if err != nil {
		return RunResult{}, "", err
	}
	t0 := time.Now()
	sb, err := s.rt.Up(ctx, runtime.UpOptions{
		Name: "mcp-run-" + sandbox.NewID()[:8], Image: e.template, MemoryMiB: mem,
		TTL: s.lim.SessionMax, Transient: true, Profile: Profile,
	})
	if err != nil {
		return RunResult{}, "", upError(e.template, err)
	}
	s.mu.Lock()
	s.transient[sb.ID] = sb
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		_, mine := s.transient[sb.ID] // Shutdown may have taken it over
		delete(s.transient, sb.ID)
		s.mu.Unlock()
		if mine {
			s.destroy(sb.Name, sb.ID, sb.Hold, "transient run finished")
		}
	}()
	res := RunResult{Sandbox: sb.Name, SandboxID: sb.ID, Transient: true, BootMS: time.Since(t0).Milliseconds()}
	if err := s.execIn(ctx, sb.ID, e, &res); err != nil {
		return RunResult{}, "", err
	}
	return res, res.Text(), nil
}

// execIn runs one command and shapes its result; a timeout is a result
// (timed_out, exit_code 124), not an error.
func (s *Server) execIn(ctx context.Context, id string, e execSpec, res *RunResult) error {
	out, errb := newCapBuffer(OutputCapBytes), newCapBuffer(OutputCapBytes)
	opts := runtime.ExecOptions{Argv: e.argv, Cwd: e.cwd, Stdout: out, Stderr: errb}
	if e.stdin != "" {
		opts.Stdin = strings.NewReader(e.stdin)
	}
	ectx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	t0 := time.Now()
	exit, err := s.rt.Exec(ectx, id, opts)
	res.DurationMS = time.Since(t0).Milliseconds()
	shapeRun(res, out, errb)
	if err != nil {
		if ctx.Err() == nil && errors.Is(ectx.Err(), context.DeadlineExceeded) {
			res.TimedOut, res.ExitCode = true, 124
			return nil
		}
		if ctx.Err() != nil {
			return errors.New("cancelled; the command was killed")
		}
		return execError(e.argv, err)
	}
	res.ExitCode, res.Signal = exit.ExitCode, exit.Signal
	res.AuditID = exit.AuditID
	if len(exit.Receipt) > 0 && json.Valid(exit.Receipt) {
		res.Receipt = json.RawMessage(exit.Receipt)
	}
	return nil
}

// execError explains why a command could not run.
func execError(argv []string, err error) error {
	prog := ""
	if len(argv) > 0 {
		prog = argv[0]
	}
	switch {
	case agentapi.IsRefused(err):
		return fmt.Errorf("refused by the sandbox's image: %s", describe(err))
	case agentapi.IsNotFound(err):
		return fmt.Errorf("%s: command not found in the sandbox (does its template have it? run_code python needs the python template, node the node template)", prog)
	case agentapi.IsPermissionDenied(err):
		return fmt.Errorf("%s: permission denied in the sandbox", prog)
	case errors.Is(err, runtime.ErrNotRunning), errors.Is(err, runtime.ErrNotFound):
		return fmt.Errorf("the sandbox is not running: %s", describe(err))
	}
	return fmt.Errorf("could not run the command: %s", describe(err))
}
