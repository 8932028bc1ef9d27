package runtime

import (
	"context"
	"errors"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// RunOptions describe a one-shot run: a transient sandbox, one command,
// teardown.
type RunOptions struct {
	Up   UpOptions
	Exec ExecOptions
	// Timeout bounds the command (not the boot); 0 means none.
	Timeout time.Duration
	// ImageCommand applies Docker's rule for `run` (see CommandFor):
	// Exec.Argv replaces the image's Cmd and keeps its Entrypoint, no
	// Argv runs the image's whole command. Without it Exec runs as given.
	ImageCommand bool
	// Entrypoint, with ImageCommand, replaces the image's Entrypoint
	// (empty: none) and drops its Cmd.
	Entrypoint *[]string
}

// CommandFor is what `run` executes on an image (Docker's rule): with an
// entrypoint given, that entrypoint then argv; with no argv, the image's
// declared command (entrypoint true: the agent runs Entrypoint + Cmd, or a
// manifest's command); otherwise the image's Entrypoint then argv, which
// replaces its Cmd.
func CommandFor(img sandbox.ImageRef, argv []string, entrypoint *[]string) (out []string, imageCommand bool) {
	switch {
	case entrypoint != nil:
		return append(append([]string(nil), (*entrypoint)...), argv...), false
	case len(argv) == 0:
		return nil, true
	}
	return append(append([]string(nil), img.Entrypoint...), argv...), false
}

// RunResult is what a run produced.
type RunResult struct {
	SandboxID string
	Name      string
	Exit      *ExecResult
	TimedOut  bool
	BootTime  time.Duration
	ExecTime  time.Duration
	// Start is StartRestored or StartCold (see Sandbox.Start).
	Start string
	// Repinned: see Sandbox.Repinned.
	Repinned *image.Repin
}

// ErrTimeout reports a command that ran past its timeout and was killed.
var ErrTimeout = errdefs.WithReason(errdefs.KindTimeout, errdefs.ReasonCommand, errors.New("command timed out"))

// Run boots a transient sandbox, runs one command and tears the sandbox
// down on every path. Cancelling ctx (Ctrl-C, SIGTERM) kills the VM.
func (r *Runtime) Run(ctx context.Context, o RunOptions) (*RunResult, error) {
	o.Up.Transient = true
	t0 := time.Now()
	sb, err := r.Up(ctx, o.Up)
	if err != nil {
		return nil, err
	}
	defer func() {
		// Down first: it waits for the supervisor to exit. Closing the
		// hold first would start a teardown Down could not wait for.
		r.Down(context.Background(), sb.ID)
		sb.Hold.Close()
	}()
	res := &RunResult{SandboxID: sb.ID, Name: sb.Name, BootTime: time.Since(t0), Start: sb.Start, Repinned: sb.Repinned}
	if o.ImageCommand {
		o.Exec.Argv, o.Exec.Entrypoint = CommandFor(sb.State.Image, o.Exec.Argv, o.Entrypoint)
	}
	if o.Exec.Timeout == 0 {
		o.Exec.Timeout = o.Timeout
	}
	t1 := time.Now()
	exit, err := r.Exec(ctx, sb.ID, o.Exec)
	res.ExecTime = time.Since(t1)
	if err != nil {
		if errors.Is(err, ErrTimeout) {
			res.TimedOut = true
			return res, err
		}
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		return res, err
	}
	res.Exit = exit
	return res, nil
}
