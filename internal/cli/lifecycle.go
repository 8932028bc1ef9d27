package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/termsafe"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func init() {
	register(newUpCmd)
	register(newExecCmd)
	register(newDownCmd)
	register(newLsCmd)
	register(newLogsCmd)
	register(newWaitCmd)
	register(newBootReportCmd)
	register(newPauseCmd)
	register(newResumeCmd)
	register(newInspectCmd)
}

// stateJSON is the public shape of a sandbox in --json output.
func stateJSON(st *sandbox.State) map[string]any {
	obj := map[string]any{
		"name": st.Name, "id": st.ID, "state": st.Status,
		"image": st.Image.Name, "image_digest": st.Image.Digest,
		"image_profile": st.Image.ImageProfile, "run_profile": st.RunProfile, "backend": st.Backend,
		"cpus": st.CPUs, "memory_mib": st.MemoryMiB,
		"created": st.Created.Format(time.RFC3339), "transient": st.Transient,
	}
	if st.Image.OCIDigest != "" {
		obj["oci_digest"] = st.Image.OCIDigest
		obj["exposed_ports"] = append([]string{}, st.Image.ExposedPorts...)
	}
	if st.Reason != "" {
		obj["reason"] = st.Reason
	}
	if st.Expires != nil {
		obj["expires"] = st.Expires.Format(time.RFC3339)
	} else {
		obj["expires"] = nil
	}
	if st.Suspended {
		obj["paused_to"] = "disk"
	}
	attachJSON(obj, st.Attachments)
	if len(st.Labels) > 0 {
		obj["labels"] = st.Labels
	}
	if st.RootDir != "" {
		obj["root_dir"] = st.RootDir
	}
	return obj
}

// listJSON is the shape of a sandbox in `ls --json` and `inspect`: the
// state plus its network mode and published ports.
func listJSON(st *sandbox.State, net runtime.NetInfo) map[string]any {
	obj := stateJSON(st)
	obj["network"] = net.Mode
	obj["ports"] = portsJSON(net.Ports)
	return obj
}

// portsJSON is the shape of published ports (as `port --json` prints them).
func portsJSON(ports []netpolicy.Publish) []map[string]any {
	rows := make([]map[string]any, 0, len(ports))
	for _, p := range ports {
		rows = append(rows, map[string]any{"host_addr": p.HostAddr, "host_port": p.HostPort, "guest_port": p.GuestPort, "proto": "tcp"})
	}
	return rows
}

func newUpCmd(app *App) *cobra.Command {
	var (
		o       runtime.UpOptions
		name    string
		memory  string
		disk    string
		env     []string
		jsonOut bool
	)
	nf := &netFlags{}
	af := &attachFlags{}
	cmd := &cobra.Command{
		Use:   "up [DIR|FILE|IR.json] [--image NAME] [--name N]",
		Short: "Boot a named sandbox that keeps running until `down` or its TTL",
		Example: `  mvmctl up --name dev
  mvmctl up --name dev --ttl 30m --memory 1G -e MODE=dev
  mvmctl up --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if cmd.Flags().Changed("memory") {
				if o.MemoryMiB, err = parseSize("memory", memory); err != nil {
					return err
				}
			}
			if cmd.Flags().Changed("disk") {
				d, err := parseSize("disk", disk)
				if err != nil {
					return err
				}
				o.DiskMiB = d
			}
			if o.Env, err = parseEnv(env); err != nil {
				return err
			}
			o.Name = name
			if err := nf.apply(app, &o); err != nil {
				return exitCode(ExitUsage, err)
			}
			if err := af.apply(&o); err != nil {
				return exitCode(ExitUsage, err)
			}
			if len(args) == 1 {
				if o.Image != "" {
					return exitCode(ExitUsage, errors.New("give either DIR or --image, not both"))
				}
				o.Image = args[0]
			}
			if err := o.Validate(); err != nil {
				return exitCode(ExitUsage, err)
			}
			if o.FromSnapshot != "" {
				for _, f := range []string{"image", "cpus", "memory", "disk", "env", "network", "allow", "publish", "volume", "secret", "refresh"} {
					if cmd.Flags().Lookup(f) != nil && cmd.Flags().Changed(f) {
						return exitCode(ExitUsage, fmt.Errorf("--%s cannot be combined with --from-snapshot: a clone runs the snapshot's image, resources, environment, network and secrets", f))
					}
				}
				if len(args) == 1 {
					return exitCode(ExitUsage, errors.New("give either DIR or --from-snapshot, not both"))
				}
				if !cmd.Flags().Changed("profile") {
					o.RunProfile = ""
				}
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, sig, stop := signalContext(context.Background())
			defer stop()
			o.BuildProgress = buildProgress(app, jsonOut)
			if !jsonOut {
				o.Progress = func(msg string) { fmt.Fprintln(app.Stderr, msg) }
			}
			var sb *runtime.Sandbox
			if o.Image != "" && runtime.IsWorkloadFile(o.Image) {
				wl, lerr := loadWorkload(ctx, o.Image)
				if lerr != nil {
					return lerr
				}
				if cmd.Flags().Changed("network") || cmd.Flags().Changed("allow") || cmd.Flags().Changed("cpus") || cmd.Flags().Changed("memory") || cmd.Flags().Changed("disk") {
					return exitCode(ExitUsage, errors.New("a declared workload brings its own network and resources: change the declaration (and approve it again) instead of passing --network/--allow/--cpus/--memory/--disk"))
				}
				o.Image = ""
				sb, err = rt.UpWorkload(ctx, wl, o)
				if err != nil && isDeclError(err) {
					return exitCode(exitDeclaration, err)
				}
			} else {
				sb, err = rt.Up(ctx, o)
			}
			if s := sig(); s != nil {
				return &ExitError{Code: signalExit(s), Err: fmt.Errorf("interrupted by %v; nothing was left running", s)}
			}
			if err != nil {
				return exitCode(bootExit(err), manifestNetworkHint(err))
			}
			if jsonOut {
				obj := stateJSON(sb.State)
				if sb.Repinned != nil {
					obj["repinned"] = sb.Repinned
				}
				return writeJSON(app.Stdout, obj)
			}
			printRepinned(app, sb.Repinned)
			fmt.Fprintln(app.Stdout, sb.Name)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&name, "name", "", "sandbox name (default: generated)")
	fl.StringVar(&o.Image, "image", "", "image or template to boot, or an OCI reference such as python:3.12-slim (default: minimal)")
	fl.BoolVar(&o.RequireDigest, "require-digest", false, "refuse an OCI image reference that is a tag (default under the restrictive profile)")
	fl.StringVar(&o.Platform, "platform", "", "platform of a multi-platform OCI image (default linux/amd64)")
	fl.BoolVar(&o.Refresh, "refresh", false, refreshUsage)
	fl.IntVar(&o.CPUs, "cpus", 0, "virtual CPUs (default: the manifest's, else 1)")
	fl.StringVar(&memory, "memory", "512M", "guest memory, e.g. 512M, 1G (default: the manifest's, else 512M)")
	fl.StringVar(&disk, "disk", "4G", "size of the sandbox's writable layer (sparse; default: the manifest's, else 4G)")
	fl.StringVar(&o.RunProfile, "profile", "standard", "run profile: restrictive, standard, dev or permissive (the image profile, dev or sealed, comes from the image)")
	fl.StringArrayVarP(&env, "env", "e", nil, "default environment for every exec, KEY=VALUE (repeatable)")
	fl.DurationVar(&o.TTL, "ttl", 0, "stop the sandbox after this long (e.g. 30m); 0 = no limit")
	fl.BoolVar(&o.Cold, "cold", false, "boot the kernel even when the image's ready snapshot could be restored (docs/snapshots.md)")
	fl.BoolVar(&jsonOut, "json", false, "print the sandbox as JSON")
	fl.StringVar(&o.FromSnapshot, "from-snapshot", "", "start from snapshot TAG (`snapshot save`) instead of booting: its own name, id and disk copy")
	nf.register(fl, true)
	af.register(fl)
	return cmd
}

func newExecCmd(app *App) *cobra.Command {
	var (
		env       []string
		workdir   string
		stdin     bool
		tty       bool
		timeout   time.Duration
		jsonOut   bool
		maxOutput int
		receipt   string
	)
	cmd := &cobra.Command{
		Use:   "exec NAME [flags] -- ARGV...",
		Short: "Run a command in a running sandbox",
		Long: `exec runs ARGV in the named sandbox, streams its output and exits with its
exit code. Many execs may run at once against one sandbox.

Exit codes: the command's own; 3 no such sandbox; 124 timeout; 125 mvm
failed; 126 not executable (or refused by a sealed image); 127 not found.`,
		Example: `  mvmctl exec dev -- python /work/task.py
  echo data | mvmctl exec -i dev -- wc -c
  mvmctl exec -t dev -- sh`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			envMap, err := parseEnv(env)
			if err != nil {
				return err
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, sig, stop := signalContext(context.Background())
			defer stop()
			o := runtime.ExecOptions{Argv: args[1:], Env: envMap, Cwd: workdir, TTY: tty, Timeout: timeout}
			if stdin {
				o.Stdin = app.Stdin
			}
			var outCap, errCap *capture
			if jsonOut {
				outCap, errCap = &capture{limit: maxOutput}, &capture{limit: maxOutput}
				o.Stdout, o.Stderr = outCap, errCap
			} else {
				o.Stdout, o.Stderr = app.Stdout, app.Stderr
			}
			if tty {
				restore, err := rawTerminal(app, &o)
				if err != nil {
					return err
				}
				defer restore()
			}
			t0 := time.Now()
			res, err := rt.Exec(ctx, args[0], o)
			if s := sig(); s != nil {
				return &ExitError{Code: signalExit(s), Err: fmt.Errorf("interrupted by %v; the command was killed", s)}
			}
			timedOut := errors.Is(err, runtime.ErrTimeout)
			if err != nil && !timedOut {
				cerr := commandError(err, args[1])
				if jsonOut {
					// Scripts get an object on every path: the error's
					// kind, reason, message and exit code.
					var ee *ExitError
					errors.As(cerr, &ee)
					obj := errorJSON(cerr, ee.Code)
					obj["message"] = withHint(cerr)
					writeJSON(app.Stdout, map[string]any{"schema_version": 1, "sandbox": args[0],
						"exit_code": ee.Code, "error": obj})
					ee.JSONDone = true
				}
				return cerr
			}
			code := ExitTimeout
			if res != nil {
				code = res.ExitCode
				if receipt != "" {
					if err := writeReceipt(receipt, res.Receipt); err != nil {
						return exitCode(1, err)
					}
				}
			}
			if jsonOut {
				writeJSON(app.Stdout, execJSON(args[0], code, timedOut, time.Since(t0), res, outCap, errCap))
			} else if timedOut {
				fmt.Fprintf(app.Stderr, "mvmctl: command timed out after %s and was killed\n", timeout)
			}
			if code != 0 {
				return &ExitError{Code: code, Silent: true}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	fl.StringVarP(&workdir, "workdir", "w", "", "working directory in the guest")
	fl.BoolVarP(&stdin, "interactive", "i", false, "forward standard input")
	fl.BoolVarP(&tty, "tty", "t", false, "allocate a pseudo-terminal")
	fl.DurationVar(&timeout, "timeout", 0, "kill the command after this long (exit 124)")
	fl.BoolVar(&jsonOut, "json", false, "print one JSON object with the result instead of streaming output")
	fl.IntVar(&maxOutput, "max-output", 4<<20, "with --json: bytes of each stream kept in the result")
	fl.StringVar(&receipt, "receipt", "", "write a signed receipt of the run to this file")
	return cmd
}

// execJSON is the object `exec --json` prints for a command that ran
// (res is nil when it timed out before the agent reported).
func execJSON(sb string, code int, timedOut bool, d time.Duration, res *runtime.ExecResult, out, errc *capture) map[string]any {
	obj := map[string]any{"schema_version": 1, "sandbox": sb, "exit_code": code,
		"timed_out": timedOut, "duration_ms": ms(d)}
	if res != nil {
		obj["audit_id"] = res.AuditID
		obj["receipt_id"] = res.ReceiptID
	}
	out.into(obj, "stdout")
	errc.into(obj, "stderr")
	return obj
}

// rawTerminal puts the caller's terminal in raw mode for -t and returns
// the function that restores it.
func rawTerminal(app *App, o *runtime.ExecOptions) (func(), error) {
	f, ok := app.Stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return func() {}, nil
	}
	if w, h, err := term.GetSize(int(f.Fd())); err == nil {
		o.Rows, o.Cols = uint32(h), uint32(w)
	}
	old, err := term.MakeRaw(int(f.Fd()))
	if err != nil {
		return nil, fmt.Errorf("raw terminal: %w", err)
	}
	return func() { term.Restore(int(f.Fd()), old) }, nil
}

func newInspectCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Print one sandbox as JSON (the object `ls --json` lists, plus boot timings)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			st, err := rt.Get(args[0])
			if err != nil {
				return err
			}
			obj := listJSON(st, rt.Net(st))
			obj["boot"] = st.Boot
			return writeJSON(app.Stdout, obj)
		},
	}
}

func newDownCmd(app *App) *cobra.Command {
	var all, jsonOut bool
	cmd := &cobra.Command{
		Use:   "down NAME... | --all",
		Short: "Stop sandboxes and remove their state",
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return exitCode(ExitUsage, errors.New("name the sandboxes to stop, or pass --all"))
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			if all {
				sts, err := rt.List(true)
				if err != nil {
					return err
				}
				for _, st := range sts {
					args = append(args, st.ID)
				}
			}
			failed := 0
			notFound := 0
			for _, name := range args {
				if err := rt.Down(context.Background(), name); err != nil {
					fmt.Fprintf(app.Stderr, "mvmctl: %s\n", withHint(err))
					if errors.Is(err, runtime.ErrNotFound) {
						notFound++
					} else {
						failed++
					}
					if jsonOut {
						writeJSON(app.Stdout, map[string]any{"schema_version": 1, "sandbox": name, "removed": false,
							"error": errorJSON(err, exitFor(err))})
					}
					continue
				}
				if jsonOut {
					writeJSON(app.Stdout, map[string]any{"schema_version": 1, "sandbox": name, "removed": true})
				} else if !all {
					fmt.Fprintln(app.Stdout, name)
				}
			}
			switch {
			case failed > 0:
				return &ExitError{Code: 1, Silent: true}
			case notFound > 0:
				return &ExitError{Code: ExitNotFound, Silent: true}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "stop every sandbox of this state directory")
	cmd.Flags().BoolVar(&jsonOut, "json", false, `print one JSON line per sandbox: {"schema_version":1,"sandbox","removed"[,"error"]}`)
	return cmd
}

func newLsCmd(app *App) *cobra.Command {
	var all, jsonOut bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"ps"},
		Short:   "List sandboxes (running ones; -a adds stopped and failed)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			sts, err := rt.List(all)
			if err != nil {
				return err
			}
			if jsonOut {
				rows := make([]map[string]any, 0, len(sts))
				for _, st := range sts {
					rows = append(rows, listJSON(st, rt.Net(st)))
				}
				return writeJSON(app.Stdout, rows)
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			labels := false // the LABELS column shows only when a sandbox has labels
			for _, st := range sts {
				labels = labels || len(st.Labels) > 0
			}
			header := "NAME\tSTATE\tIMAGE\tCPUS\tMEMORY\tCREATED\tEXPIRES"
			if labels {
				header += "\tLABELS"
			}
			fmt.Fprintln(tw, header)
			for _, st := range sts {
				state := st.Status
				if st.Reason != "" && !sandbox.Active(st.Status) {
					state += " (" + st.Reason + ")"
				}
				exp := "-"
				if st.Expires != nil {
					exp = humanSince(time.Until(*st.Expires))
				}
				img := st.Image.Name
				if st.RootDir != "" {
					img = "rootdir:" + st.RootDir
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%dM\t%s ago\t%s", st.Name, state, img,
					st.CPUs, st.MemoryMiB, humanSince(time.Since(st.Created)), exp)
				if labels {
					fmt.Fprintf(tw, "\t%s", strings.Join(runtime.SortedLabels(st.Labels), ","))
				}
				fmt.Fprintln(tw)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "include stopped and failed sandboxes")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print a JSON array")
	return cmd
}

func humanSince(d time.Duration) string {
	if d < 0 {
		return "expired"
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func newLogsCmd(app *App) *cobra.Command {
	var o runtime.LogOptions
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Show the guest console and agent log (-f to follow)",
		Long: `logs prints the guest's serial console, which also carries the agent's log.
The supervisor caps it (MVM_CONSOLE_LOG_MAX bytes, default 4 MiB, then it
rotates, keeping one previous generation). The guest writes it, so control
characters are shown escaped (\x1b...) unless --raw is given.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Lines < 0 {
				return exitCode(ExitUsage, errors.New("-n must not be negative"))
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, _, stop := signalContext(context.Background())
			defer stop()
			var w io.Writer = app.Stdout
			var nd *ndjsonLines
			if jsonOut {
				// JSON escapes control characters itself.
				nd = &ndjsonLines{w: app.Stdout}
				w, o.Raw = nd, true
			}
			err = rt.Logs(ctx, args[0], o, w)
			if nd != nil {
				nd.Flush()
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, `print NDJSON: one {"line": TEXT} per console line`)
	cmd.Flags().BoolVarP(&o.Follow, "follow", "f", false, "keep printing new output until the sandbox stops or Ctrl-C")
	cmd.Flags().IntVarP(&o.Lines, "lines", "n", 0, "print only the last N lines (0 = all)")
	cmd.Flags().BoolVar(&o.Raw, "raw", false, "print the guest's bytes unescaped (control characters reach your terminal)")
	return cmd
}

func newWaitCmd(app *App) *cobra.Command {
	var timeout time.Duration
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "wait NAME",
		Short: "Wait until a sandbox is running and its agent answers (exit 75 on timeout, 65 if it failed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, _, stop := signalContext(context.Background())
			defer stop()
			st, err := rt.Wait(ctx, args[0], timeout)
			if err != nil {
				return err
			}
			if jsonOut {
				return writeJSON(app.Stdout, map[string]any{"schema_version": 1, "name": st.Name, "id": st.ID, "state": st.Status, "ready": true})
			}
			fmt.Fprintln(app.Stdout, st.Name, "ready")
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "give up after this long")
	cmd.Flags().BoolVar(&jsonOut, "json", false, `print {"schema_version":1,"name","id","state","ready":true}`)
	return cmd
}

func newBootReportCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "boot-report NAME",
		Short: "Show readiness per component and boot timings",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			st, err := rt.Get(args[0])
			if err != nil {
				return err
			}
			if jsonOut {
				return writeJSON(app.Stdout, map[string]any{"schema_version": 1, "name": st.Name, "id": st.ID, "state": st.Status, "boot": st.Boot})
			}
			// Component names and states, and the agent's description of
			// itself, come from the guest: escaped before they reach the
			// terminal.
			b := st.Boot
			fmt.Fprintf(app.Stdout, "%s (%s, %s)\n", st.Name, st.Status, termsafe.Line(b.Accel))
			fmt.Fprintf(app.Stdout, "start: %s\n", startLine(b))
			fmt.Fprintf(app.Stdout, "host:  vmm started %d ms, channel open %d ms, agent ready %d ms\n", b.VMMStartedMS, b.ChannelOpenMS, b.AgentReadyMS)
			when := "since kernel start"
			if b.Start == runtime.StartRestored {
				when = "since kernel start, at the ready snapshot's boot"
			}
			fmt.Fprintf(app.Stdout, "guest: agent started %d ms, modules %d ms, root %d ms, channel bound %d ms (%s)\n",
				b.Guest["agent_started"], b.Guest["modules_loaded"], b.Guest["root_mounted"], b.Guest["channel_bound"], when)
			if len(b.AgentInfo) > 0 {
				fmt.Fprintf(app.Stdout, "agent (as reported by the guest): version %s, kernel %s, image profile %s\n",
					termsafe.Line(b.AgentInfo["version"]), termsafe.Line(b.AgentInfo["kernel"]), termsafe.Line(b.AgentInfo["reported_profile"]))
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			for _, k := range sortedKeys(b.Components) {
				fmt.Fprintf(tw, "  %s\t%s\n", termsafe.Line(k), termsafe.Line(b.Components[k]))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

// startLine says how a sandbox started, for boot-report.
func startLine(b sandbox.BootReport) string {
	var line string
	switch b.Start {
	case runtime.StartRestored:
		line = "restored"
		if b.Snapshot != "" {
			line += " from ready snapshot " + b.Snapshot
		}
		if b.RestoreMS > 0 {
			line += fmt.Sprintf(" (state loaded in %d ms)", b.RestoreMS)
		}
	case runtime.StartCold, "":
		line = "cold"
		if b.StartReason != "" {
			line += " (" + b.StartReason + ")"
		}
	default:
		line = termsafe.Line(b.Start)
	}
	if b.Pool != "" {
		line += "; claimed from warm pool " + b.Pool
	}
	return line
}

func newPauseCmd(app *App) *cobra.Command {
	var o runtime.PauseOptions
	cmd := controlCmd(app, "pause", "Pause a sandbox to disk: memory, device state and disk are saved and its VMM exits (--in-memory: only stop its vCPUs)",
		func(ctx context.Context, rt *runtime.Runtime, name string) (*sandbox.State, error) {
			return rt.Pause(ctx, name, o)
		})
	cmd.Flags().BoolVar(&o.InMemory, "in-memory", false, "only stop the vCPUs; the VMM keeps the guest's RAM (and its TTL runs)")
	cmd.Flags().BoolVar(&o.TTLPaused, "ttl-paused", false, "let the TTL run while paused to disk (by default it waits)")
	return cmd
}

func newResumeCmd(app *App) *cobra.Command {
	return controlCmd(app, "resume", "Resume a paused sandbox (from disk: restored in place, same name and id)",
		func(ctx context.Context, rt *runtime.Runtime, name string) (*sandbox.State, error) {
			return rt.Resume(ctx, name)
		})
}

func controlCmd(app *App, op, short string, do func(context.Context, *runtime.Runtime, string) (*sandbox.State, error)) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   op + " NAME",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			if _, err := rt.Get(args[0]); err != nil {
				return err
			}
			// Pause to disk and resume from it bound their own waits
			// (save, boot deadline).
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
			defer cancel()
			st, err := do(ctx, rt, args[0])
			if err != nil {
				return err
			}
			if jsonOut {
				return writeJSON(app.Stdout, stateJSON(st))
			}
			if st.Suspended {
				fmt.Fprintln(app.Stdout, st.Name, st.Status, "(to disk)")
				return nil
			}
			fmt.Fprintln(app.Stdout, st.Name, st.Status)
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the sandbox as JSON (the object `up --json` prints)")
	return cmd
}
