package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func init() { register(newProcCmd) }

func newProcCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proc",
		Short: "Background processes in a running sandbox",
		Long: fmt.Sprintf(`proc starts processes that outlive the command that started them and
manages them by handle.

The output of each process is kept in a bounded buffer (the last %d KiB of
stdout and of stderr). A reader that falls behind, or waits late, is told
how many bytes it lost; the process itself is never blocked by a slow
reader. Exited processes are kept for %s (at most %d) with their status.
At most %d processes run at once (exit 8 beyond that).

Exit codes: 3 no such sandbox; 4 no such handle; 8 a cap was hit; 126
refused by a sealed image; 127 command not found; proc wait exits with
the process's own code.`, agentapi.ProcOutputBytes>>10, agentapi.ProcRetention,
			agentapi.MaxExitedProcs, agentapi.MaxProcs),
	}
	cmd.AddCommand(newProcStartCmd(app), newProcLsCmd(app), newProcWaitCmd(app),
		newProcSignalCmd(app), newProcKillCmd(app), newProcStdinCmd(app))
	return cmd
}

func procJSON(p *runtime.ProcInfo) map[string]any {
	obj := map[string]any{
		"handle": p.Handle, "pid": p.Pid, "argv": p.Argv, "state": p.State,
		"started":      p.Started.UTC().Format(time.RFC3339Nano),
		"stdout_bytes": p.StdoutBytes, "stderr_bytes": p.StderrBytes,
		"stdout_dropped": p.StdoutDropped, "stderr_dropped": p.StderrDropped,
		"stdin_open": p.StdinOpen, "exit_code": nil, "signal": nil, "exited": nil,
	}
	if p.Exit != nil {
		obj["exit_code"], obj["signal"] = p.Exit.Code, p.Exit.Signal
		obj["exited"] = p.Exited.UTC().Format(time.RFC3339Nano)
	}
	return obj
}

func newProcStartCmd(app *App) *cobra.Command {
	var (
		env        []string
		workdir    string
		stdin      bool
		entrypoint bool
		jsonOut    bool
	)
	cmd := &cobra.Command{
		Use:   "start NAME [-e K=V] [-w DIR] [-i] -- ARGV...",
		Short: "Start a background process and print its handle",
		Example: `  h=$(mvmctl proc start dev -- sh -c 'while true; do date; sleep 1; done')
  mvmctl proc wait dev $h`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 && !entrypoint {
				return exitCode(ExitUsage, errors.New("give the command after --, e.g. `mvmctl proc start dev -- sleep 60`"))
			}
			envMap, err := parseEnv(env)
			if err != nil {
				return err
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, stop := fsCtx()
			defer stop()
			info, auditID, err := rt.ProcStart(ctx, args[0], runtime.ProcStartOptions{
				Argv: args[1:], Env: envMap, Cwd: workdir, Stdin: stdin, Entrypoint: entrypoint})
			if err != nil {
				if status.Code(err) == codes.ResourceExhausted {
					return fsError(err, "proc start")
				}
				argv0 := "the entrypoint"
				if len(args) > 1 {
					argv0 = args[1]
				}
				return commandError(err, argv0)
			}
			if jsonOut {
				obj := procJSON(info)
				obj["audit_id"] = auditID
				return writeJSON(app.Stdout, obj)
			}
			fmt.Fprintln(app.Stdout, info.Handle)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	fl.StringVarP(&workdir, "workdir", "w", "", "working directory in the guest")
	fl.BoolVarP(&stdin, "stdin", "i", false, "keep stdin open for `mvmctl proc stdin` (default: /dev/null)")
	fl.BoolVar(&entrypoint, "entrypoint", false, "run the image's declared command (ARGV appended); allowed on sealed images")
	fl.BoolVar(&jsonOut, "json", false, "print the process as JSON")
	return cmd
}

func newProcLsCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "ls NAME",
		Short: "List background processes (running and recently exited)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, stop := fsCtx()
			defer stop()
			procs, err := rt.ProcList(ctx, args[0])
			if err != nil {
				return fsError(err, "proc ls")
			}
			if jsonOut {
				rows := make([]map[string]any, 0, len(procs))
				for _, p := range procs {
					rows = append(rows, procJSON(p))
				}
				return writeJSON(app.Stdout, rows)
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "HANDLE\tPID\tSTATE\tEXIT\tOUTPUT\tDROPPED\tSTARTED\tCOMMAND")
			for _, p := range procs {
				exit := "-"
				if p.Exit != nil {
					exit = strconv.Itoa(int(p.Exit.Code))
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%s ago\t%s\n", safeName(p.Handle), p.Pid, p.State, exit,
					p.StdoutBytes+p.StderrBytes, p.StdoutDropped+p.StderrDropped,
					humanSince(time.Since(p.Started)), safeName(strings.Join(p.Argv, " ")))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print a JSON array")
	return cmd
}

func newProcWaitCmd(app *App) *cobra.Command {
	var (
		noFollow bool
		timeout  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "wait NAME HANDLE",
		Short: "Stream a process's output from its start, then exit with its code",
		Long: `wait prints the process's retained output from the beginning (stdout to
stdout, stderr to stderr), follows it until the process exits, and exits
with the process's exit code. It may be called any number of times, late
or concurrently. Output that left the bounded buffer before this reader got
it is reported on stderr with its size.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, sig, stop := signalContext(cmd.Context())
			defer stop()
			if timeout > 0 {
				var cancel func()
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			gap := func(g runtime.OutputGap) {
				stream := map[int32]string{1: "stdout", 2: "stderr"}[g.Fd]
				fmt.Fprintf(app.Stderr, "mvmctl: %d bytes of %s were dropped: this reader fell behind the process's bounded output buffer (%d KiB)\n",
					g.Lost, stream, agentapi.ProcOutputBytes>>10)
			}
			last, err := rt.ProcWait(ctx, args[0], args[1], noFollow, app.Stdout, app.Stderr, gap)
			if s := sig(); s != nil {
				return &ExitError{Code: signalExit(s), Err: fmt.Errorf("interrupted by %v; the process keeps running", s)}
			}
			if err != nil {
				if timeout > 0 && ctx.Err() != nil {
					return exitCode(ExitTimeout, fmt.Errorf("proc wait: %s still running after %s", args[1], timeout))
				}
				return fsError(err, "proc wait "+args[1])
			}
			if r := last.Running; r != nil {
				fmt.Fprintf(app.Stderr, "mvmctl: %s is still running (pid %d)\n", r.Handle, r.Pid)
				return nil
			}
			if last.Exit != nil && last.Exit.Code != 0 {
				return &ExitError{Code: int(last.Exit.Code), Silent: true}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noFollow, "no-follow", false, "print the retained output and return while the process runs")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "stop waiting after this long (exit 124; the process keeps running)")
	return cmd
}

// parseSignal accepts TERM, SIGTERM, term or 15.
func parseSignal(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, exitCode(ExitUsage, fmt.Errorf("signal %d: must be between 1 and 64", n))
		}
		return n, nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if n := unix.SignalNum(name); n != 0 {
		return int(n), nil
	}
	return 0, exitCode(ExitUsage, fmt.Errorf("unknown signal %q (try TERM, KILL, INT, HUP or a number)", s))
}

func signalProc(app *App, name, handle string, sig int) error {
	rt, err := app.runtime()
	if err != nil {
		return err
	}
	ctx, stop := fsCtx()
	defer stop()
	info, err := rt.ProcSignal(ctx, name, handle, sig)
	if err != nil {
		return fsError(err, "proc signal "+handle)
	}
	if info.State == "exited" {
		code := int32(0)
		if info.Exit != nil {
			code = info.Exit.Code
		}
		fmt.Fprintf(app.Stderr, "mvmctl: %s had already exited (code %d)\n", handle, code)
	}
	return nil
}

func newProcSignalCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:   "signal NAME HANDLE SIG",
		Short: "Send a signal (TERM, INT, HUP, 9, ...) to a process and its group",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			sig, err := parseSignal(args[2])
			if err != nil {
				return err
			}
			return signalProc(app, args[0], args[1], sig)
		},
	}
}

func newProcKillCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:   "kill NAME HANDLE",
		Short: "Kill a process and its group (SIGKILL)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return signalProc(app, args[0], args[1], int(unix.SIGKILL))
		},
	}
}

func newProcStdinCmd(app *App) *cobra.Command {
	var (
		content  string
		closeArg bool
	)
	cmd := &cobra.Command{
		Use:   "stdin NAME HANDLE [--content TEXT] [--close]",
		Short: "Write standard input (or --content) to a process started with -i",
		Example: `  h=$(mvmctl proc start -i dev -- cat)
  echo hello | mvmctl proc stdin dev $h --close
  mvmctl proc wait dev $h`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var in io.Reader = app.Stdin
			if cmd.Flags().Changed("content") {
				in = strings.NewReader(content)
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, stop := fsCtx()
			defer stop()
			_, err = rt.ProcStdin(ctx, args[0], args[1], in, closeArg)
			return fsError(err, "proc stdin "+args[1])
		},
	}
	cmd.Flags().StringVar(&content, "content", "", "send this text instead of standard input")
	cmd.Flags().BoolVar(&closeArg, "close", false, "close the process's stdin afterwards (it sees EOF)")
	return cmd
}
