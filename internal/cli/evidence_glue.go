package cli

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/atomicfile"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

func init() {
	// The supervisor records lifecycle events in the audit chain.
	auditHook = func(app *App) func(string, *sandbox.State, map[string]any) {
		return func(kind string, st *sandbox.State, fields map[string]any) {
			rt, err := app.runtime()
			if err != nil {
				return
			}
			if fields == nil {
				fields = map[string]any{}
			}
			fields["image_digest"] = st.Image.Digest
			if _, err := rt.Audit(kind, st.ID, fields); err != nil {
				fmt.Fprintf(app.Stderr, "audit: %v\n", err)
			}
		}
	}
}

// writeReceipt writes a signed receipt, refusing to clobber a directory.
func writeReceipt(path string, receipt []byte) error {
	if len(receipt) == 0 {
		return errors.New("no receipt was produced")
	}
	if err := atomicfile.WriteFile(path, receipt, 0o644); err != nil {
		return fmt.Errorf("write receipt %s: %w", path, err)
	}
	return nil
}

// dryRun prints what `run` would ask admission for, without booting,
// resolving the image or network names, creating keys or writing any
// state. The verdict is the runtime's (Runtime.WouldAdmit), the same check
// real admission runs.
func dryRun(app *App, f *runFlags, argv []string, env map[string]string, memMiB int) error {
	rt, err := app.runtime()
	if err != nil {
		return exitCode(ExitMvm, err)
	}
	netCfg, err := f.net.config(app)
	if err != nil {
		return exitCode(ExitUsage, err)
	}
	opts := runtime.UpOptions{Image: f.image, CPUs: f.cpus, MemoryMiB: memMiB, Env: env, RunProfile: f.profile, Network: netCfg, Transient: true}
	if err := f.attach.apply(&opts); err != nil {
		return exitCode(ExitUsage, err)
	}
	p, verr := rt.WouldAdmit(opts)
	if p == nil {
		// Not a policy verdict: the options themselves are wrong.
		if errors.Is(verr, runtime.ErrPolicy) {
			var pd *plan.PolicyDenied
			if errors.As(verr, &pd) && pd.Rule == plan.RuleUnknownProfile {
				return exitCode(ExitUsage, verr)
			}
			return exitCode(ExitCannotExec, manifestNetworkHint(verr))
		}
		return exitCode(ExitUsage, verr)
	}
	verdict, reason := "admit", ""
	if verr != nil {
		verdict, reason = "refuse", verr.Error()
	}
	img := f.image
	if img == "" {
		img = "minimal"
	}
	keys := evidence.SortedKeys(env)
	inv := evidence.RedactInvocation(argv, env)
	obj := map[string]any{
		"schema_version": 1, "dry_run": true, "will_execute": false,
		"run_profile": string(p.RunProfile), "backend": p.Backend, "console": p.Console, "verdict": verdict,
		"invocation": map[string]any{"argv_len": inv.ArgvLen, "argv_sha256": inv.ArgvSHA256, "env_keys": keys,
			"workdir_set": f.workdir != "", "stdin_forwarded": f.stdin || !isTerminal(app.Stdin)},
		"resources": map[string]any{"cpus": p.Resources.CPUs, "memory_mib": p.Resources.MemoryMiB, "timeout_secs": int(f.timeout / time.Second)},
		"image":     img,
		"network":   map[string]any{"mode": string(p.Network.Mode), "allow": p.Network.Allow, "publish": p.Network.Publish},
		"receipt":   map[string]any{"requested": f.receipt != ""},
	}
	if reason != "" {
		obj["reason"] = reason
	}
	planAttachJSON(obj, p)
	if f.jsonOut {
		writeJSON(app.Stdout, obj)
	} else {
		fmt.Fprintf(app.Stdout, "dry run: would %s (run profile %s)\n", verdict, p.RunProfile)
		if reason != "" {
			fmt.Fprintf(app.Stdout, "  reason:    %s\n", reason)
		}
		fmt.Fprintf(app.Stdout, "  command:   %d args, sha256 %s\n", inv.ArgvLen, inv.ArgvSHA256)
		fmt.Fprintf(app.Stdout, "  env keys:  %s\n", strings.Join(keys, ", "))
		fmt.Fprintf(app.Stdout, "  resources: %d cpu, %d MiB, timeout %s\n", p.Resources.CPUs, p.Resources.MemoryMiB, f.timeout)
		network := string(p.Network.Mode)
		if len(p.Network.Allow) > 0 {
			network += " " + strings.Join(p.Network.Allow, ", ")
		}
		fmt.Fprintf(app.Stdout, "  image:     %s\n  backend:   %s\n  network:   %s\n  receipt:   %v\n", img, p.Backend, network, f.receipt != "")
		printPlanAttachments(app, p)
	}
	if verdict == "refuse" {
		return &ExitError{Code: ExitCannotExec, Silent: true}
	}
	return nil
}

// buildProgress reports image builds: NDJSON events to stderr with --json
// (stdout keeps the one result object), human lines otherwise.
func buildProgress(app *App, jsonOut bool) func(image.Event) {
	start := time.Now()
	return func(ev image.Event) {
		if jsonOut {
			writeJSON(app.Stderr, ev)
			return
		}
		if ev.Status == "progress" && !isTerminal(app.Stderr) {
			return
		}
		fmt.Fprintf(app.Stderr, "[%5.1fs] %s %s %s\n", time.Since(start).Seconds(), ev.Phase, ev.Status, ev.Message)
	}
}
