package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func init() { register(newConsoleCmd) }

// escapeByte is Ctrl-]: typed in a console, it detaches.
const escapeByte = 0x1d

// escapeReader passes input through until the escape byte, then calls
// detach and never returns more input.
type escapeReader struct {
	r      io.Reader
	ctx    context.Context
	detach func()
}

func (e *escapeReader) Read(p []byte) (int, error) {
	if e.ctx.Err() != nil {
		<-e.ctx.Done()
		return 0, e.ctx.Err()
	}
	n, err := e.r.Read(p)
	if i := bytes.IndexByte(p[:n], escapeByte); i >= 0 {
		e.detach()
		return i, nil
	}
	return n, err
}

func newConsoleCmd(app *App) *cobra.Command {
	var (
		command string
		shell   string
		env     []string
	)
	cmd := &cobra.Command{
		Use:   "console NAME [--command CMD]",
		Short: "Open an interactive shell in a sandbox (Ctrl-] detaches)",
		Long: `console opens a shell on a pseudo-terminal in the guest, with the local
terminal in raw mode and window size changes forwarded. Ctrl-] detaches:
the session ends (its shell is hung up) and the terminal is restored, as
it is on every other way out (the shell exits, SIGTERM, SIGHUP, errors).

--command runs one command through sh -c instead, without a terminal, and
exits with its exit code.

A console needs a sandbox created under the dev or permissive run profile
(up --profile dev) on an image that is not sealed; otherwise both forms are
refused (exit 126). The admitted plan records whether a console is allowed:
mvmctl checks it, and the guest agent, told at boot, refuses a terminal
session as well.`,
		Example: `  mvmctl console dev
  mvmctl console dev --command "uname -a"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			envMap, err := parseEnv(env)
			if err != nil {
				return err
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("command") {
				return consoleCommand(app, rt, args[0], command, envMap)
			}
			return consoleInteractive(app, rt, args[0], shell, envMap)
		},
	}
	cmd.Flags().StringVarP(&command, "command", "c", "", "run this command (via sh -c) and exit with its code")
	cmd.Flags().StringVar(&shell, "shell", "/bin/sh", "shell to run in the guest")
	cmd.Flags().StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	return cmd
}

func consoleCommand(app *App, rt *runtime.Runtime, name, command string, env map[string]string) error {
	ctx, sig, stop := signalContext(context.Background())
	defer stop()
	res, err := rt.Exec(ctx, name, runtime.ExecOptions{
		Argv: []string{"/bin/sh", "-c", command}, Env: env, Stdout: app.Stdout, Stderr: app.Stderr, Console: true,
	})
	if s := sig(); s != nil {
		return &ExitError{Code: signalExit(s), Err: fmt.Errorf("interrupted by %v; the command was killed", s)}
	}
	if err != nil {
		return commandError(err, "/bin/sh")
	}
	if res.ExitCode != 0 {
		return &ExitError{Code: res.ExitCode, Silent: true}
	}
	return nil
}

func consoleInteractive(app *App, rt *runtime.Runtime, name, shell string, env map[string]string) error {
	in, ok := app.Stdin.(*os.File)
	if !ok || !term.IsTerminal(int(in.Fd())) {
		return exitCode(ExitUsage, errors.New("console needs a terminal on standard input; use --command CMD, or `mvmctl exec -i NAME -- sh` for a pipe"))
	}
	fd := int(in.Fd())
	sizeFd := fd
	if out, ok := app.Stdout.(*os.File); ok && term.IsTerminal(int(out.Fd())) {
		sizeFd = int(out.Fd())
	}
	var rows, cols uint32
	if w, h, err := term.GetSize(sizeFd); err == nil {
		rows, cols = uint32(h), uint32(w)
	}
	fmt.Fprintf(app.Stderr, "mvmctl: connected to %s; Ctrl-] detaches\n", name)
	old, err := term.MakeRaw(fd)
	if err != nil {
		return exitCode(ExitMvm, fmt.Errorf("raw terminal: %w", err))
	}
	var once sync.Once
	restore := func() { once.Do(func() { term.Restore(fd, old) }) }
	defer restore() // also on panic

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var detached atomic.Bool
	var gotSig atomic.Value
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGWINCH, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	control := make(chan *pb.ExecInput, 8)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-sigs:
				if s == syscall.SIGWINCH {
					if w, h, err := term.GetSize(sizeFd); err == nil {
						select {
						case control <- &pb.ExecInput{Msg: &pb.ExecInput_Resize{Resize: &pb.Resize{Rows: uint32(h), Cols: uint32(w)}}}:
						default: // a resize is pending; the next one carries the latest size
						}
					}
					continue
				}
				gotSig.Store(s)
				cancel()
				return
			}
		}
	}()
	stdin := &escapeReader{r: in, ctx: ctx, detach: func() { detached.Store(true); cancel() }}
	res, err := rt.Console(ctx, name, runtime.ConsoleOptions{
		Argv: []string{shell}, Env: env, Rows: rows, Cols: cols,
		Stdin: stdin, Stdout: app.Stdout, Control: control,
	})
	restore()
	switch {
	case detached.Load():
		fmt.Fprintf(app.Stderr, "\r\nmvmctl: detached from %s\n", name)
		return nil
	case gotSig.Load() != nil:
		s := gotSig.Load().(os.Signal)
		return &ExitError{Code: signalExit(s), Err: fmt.Errorf("console closed by %v", s)}
	case err != nil:
		return commandError(err, shell)
	}
	if res.ExitCode != 0 {
		return &ExitError{Code: res.ExitCode, Silent: true}
	}
	return nil
}
