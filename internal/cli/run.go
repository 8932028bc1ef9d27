package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/spf13/cobra"
)

func init() { register(newRunCmd) }

type runFlags struct {
	cpus    int
	memory  string
	timeout time.Duration
	env     []string
	workdir string
	image   string
	// requireDigest and platform apply to an OCI image reference.
	requireDigest bool
	platform      string
	refresh       bool
	// entrypoint replaces the image's Entrypoint when set (Docker's
	// --entrypoint: one executable; "" clears it).
	entrypoint    string
	entrypointSet bool
	jsonOut       bool
	stdin         bool
	maxOutput     int
	receipt       string
	profile       string
	dryRun        bool
	cold          bool
	net           netFlags
	attach        attachFlags
}

func newRunCmd(app *App) *cobra.Command {
	f := &runFlags{}
	var mode string
	cmd := &cobra.Command{
		Use:   "run [flags] [-- ARGV...] | run --mode live|record SCRIPT [ARGS...]",
		Short: "Boot a transient sandbox, run one command in it, tear it down",
		Long: `run boots a fresh microVM, runs ARGV in it with stdout and stderr streamed
separately, exits with the command's exit code and removes the sandbox on
every path (success, failure, timeout, Ctrl-C, SIGTERM).

Standard input is forwarded when it is not a terminal (use -i to force it).

Without ARGV, the image's declared command runs (an OCI image's Entrypoint
and Cmd, or a manifest's command): give --image. With ARGV on an OCI image,
Docker's rule applies: ARGV replaces the image's Cmd and keeps its
Entrypoint; --entrypoint EXE replaces the Entrypoint (and drops the Cmd),
--entrypoint "" runs ARGV alone. The receipt records the command that ran.

Exit codes: the command's own; 124 timeout; 125 mvm failed (boot, transport);
126 command not executable; 127 command not found; 130/143 interrupted.`,
		Example: `  mvmctl run -- uname -a
  mvmctl run --image python:3.12-slim -- python -V
  mvmctl run --image ghcr.io/org/app:1 --entrypoint sh -- -c 'ls /'
  echo hi | mvmctl run -- cat
  mvmctl run --timeout 10s --memory 1G -e MODE=fast -- sh -c 'echo $MODE'
  mvmctl run --json -- true`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if mode != "" {
				return runScript(cmd.Context(), app, mode, args)
			}
			f.entrypointSet = cmd.Flags().Changed("entrypoint")
			if len(args) == 0 && (f.entrypointSet && f.entrypoint == "" || !f.entrypointSet && f.image == "") {
				return exitCode(ExitUsage, errors.New("nothing to run: give -- ARGV, or --image with an image that declares a command (an OCI image's Entrypoint/Cmd)"))
			}
			return runRun(cmd.Context(), app, f, args)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&mode, "mode", "", "live|record: run SCRIPT (an SDK script, .py or .js) on the host with MVM_SDK_MODE set instead of ARGV in a microVM; record prints the Workload IR of its recording (docs/declarations.md)")
	fl.IntVar(&f.cpus, "cpus", 1, "virtual CPUs")
	fl.StringVar(&f.memory, "memory", "512M", "guest memory (e.g. 512M, 1G)")
	fl.DurationVar(&f.timeout, "timeout", 0, "kill the command after this long (exit 124); 0 = no limit")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "working directory in the guest")
	fl.StringVar(&f.image, "image", "", "image to boot: a template, a built image, or an OCI reference such as python:3.12-slim (default: the built-in minimal image)")
	fl.BoolVar(&f.requireDigest, "require-digest", false, "refuse an OCI image reference that is a tag (default under the restrictive profile)")
	fl.StringVar(&f.platform, "platform", "", "platform of a multi-platform OCI image (default linux/amd64)")
	fl.BoolVar(&f.refresh, "refresh", false, refreshUsage)
	fl.StringVar(&f.entrypoint, "entrypoint", "", "run this executable instead of the image's Entrypoint (ARGV follows it; the image's Cmd is dropped); \"\" runs ARGV alone")
	fl.BoolVar(&f.jsonOut, "json", false, "print one JSON object with the result instead of streaming output")
	fl.BoolVarP(&f.stdin, "interactive", "i", false, "forward standard input even when it is a terminal")
	fl.IntVar(&f.maxOutput, "max-output", 4<<20, "with --json: bytes of each stream kept in the result")
	fl.StringVar(&f.receipt, "receipt", "", "write a signed receipt of the run to this file")
	fl.StringVar(&f.profile, "profile", "standard", "run profile: restrictive, standard, dev or permissive (needs MVM_ACK_PERMISSIVE_RUN=1)")
	fl.BoolVar(&f.dryRun, "dry-run", false, "show what would be admitted; boot nothing, write nothing")
	fl.BoolVar(&f.cold, "cold", false, "boot the kernel even when the image's ready snapshot could be restored (docs/snapshots.md)")
	f.net.register(fl, false)
	f.attach.register(fl)
	return cmd
}

func runRun(parent context.Context, app *App, f *runFlags, argv []string) error {
	mem, err := parseSize("memory", f.memory)
	if err != nil {
		return err
	}
	env, err := parseEnv(f.env)
	if err != nil {
		return err
	}
	if f.timeout < 0 {
		return exitCode(ExitUsage, errors.New("--timeout must not be negative"))
	}
	if f.cpus < 1 {
		return exitCode(ExitUsage, fmt.Errorf("--cpus %d: must be at least 1", f.cpus))
	}
	if f.dryRun {
		return dryRun(app, f, argv, env, mem)
	}
	rt, err := app.runtime()
	if err != nil {
		return exitCode(ExitMvm, err)
	}
	if parent == nil {
		parent = context.Background()
	}
	ctx, sig, stop := signalContext(parent)
	defer stop()

	opts := runtime.RunOptions{
		Up:      runtime.UpOptions{Image: f.image, CPUs: f.cpus, MemoryMiB: mem, Env: env, RunProfile: f.profile, RequireDigest: f.requireDigest, Platform: f.platform, Refresh: f.refresh, Cold: f.cold},
		Exec:    runtime.ExecOptions{Argv: argv, Cwd: f.workdir},
		Timeout: f.timeout, ImageCommand: true,
	}
	if f.entrypointSet {
		ep := []string{}
		if f.entrypoint != "" {
			ep = []string{f.entrypoint}
		}
		opts.Entrypoint = &ep
	}
	if err := f.net.apply(app, &opts.Up); err != nil {
		return exitCode(ExitUsage, err)
	}
	if err := f.attach.apply(&opts.Up); err != nil {
		return exitCode(ExitUsage, err)
	}
	if err := opts.Up.Validate(); err != nil {
		return exitCode(ExitUsage, err)
	}
	if f.stdin || !isTerminal(app.Stdin) {
		opts.Exec.Stdin = app.Stdin
	}
	var outCap, errCap *capture
	if f.jsonOut {
		outCap = &capture{limit: f.maxOutput}
		errCap = &capture{limit: f.maxOutput}
		opts.Exec.Stdout, opts.Exec.Stderr = outCap, errCap
	} else {
		opts.Exec.Stdout, opts.Exec.Stderr = app.Stdout, app.Stderr
	}
	t0 := time.Now()
	res, err := rt.Run(ctx, opts)
	total := time.Since(t0)
	if res != nil && !f.jsonOut {
		printRepinned(app, res.Repinned)
	}
	if s := sig(); s != nil {
		fmt.Fprintf(app.Stderr, "mvmctl: interrupted by %v; sandbox removed\n", s)
		return &ExitError{Code: signalExit(s), Silent: true}
	}
	if err != nil && !errors.Is(err, runtime.ErrTimeout) {
		if res == nil { // the sandbox did not come up
			return exitCode(bootExit(err), manifestNetworkHint(err))
		}
		cmdName := "the image's command"
		if f.entrypoint != "" {
			cmdName = f.entrypoint
		} else if len(argv) > 0 {
			cmdName = argv[0]
		}
		return commandError(err, cmdName)
	}
	if f.receipt != "" && res.Exit != nil {
		if err := writeReceipt(f.receipt, res.Exit.Receipt); err != nil {
			return exitCode(1, err)
		}
	}
	code := 0
	timedOut := errors.Is(err, runtime.ErrTimeout)
	if timedOut {
		code = ExitTimeout
	} else {
		code = res.Exit.ExitCode
	}
	if f.jsonOut {
		obj := map[string]any{
			"schema_version": 1,
			"sandbox_id":     res.SandboxID,
			"name":           res.Name,
			"exit_code":      code,
			"timed_out":      timedOut,
			"timings": map[string]int64{
				"boot_ms": ms(res.BootTime), "exec_ms": ms(res.ExecTime), "total_ms": ms(total),
			},
			"start": res.Start,
		}
		if res.Repinned != nil {
			obj["repinned"] = res.Repinned
		}
		if res.Exit != nil {
			obj["signal"] = res.Exit.Signal
			obj["audit_id"] = res.Exit.AuditID
			obj["receipt_id"] = res.Exit.ReceiptID
		}
		if f.receipt != "" {
			obj["receipt_path"] = f.receipt
		}
		outCap.into(obj, "stdout")
		errCap.into(obj, "stderr")
		writeJSON(app.Stdout, obj)
	}
	if timedOut {
		if !f.jsonOut {
			fmt.Fprintf(app.Stderr, "mvmctl: %v; the command was killed and the sandbox removed\n", err)
		}
		return &ExitError{Code: ExitTimeout, Silent: true}
	}
	if code != 0 {
		return &ExitError{Code: code, Silent: true}
	}
	return nil
}
