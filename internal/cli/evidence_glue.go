package cli

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/manifest"
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
	if err := evidence.WriteFileAtomic(path, receipt, 0o644); err != nil {
		return fmt.Errorf("write receipt %s: %w", path, err)
	}
	return nil
}

// dryRun prints what `run` would ask admission for, without booting,
// resolving network names, creating keys or writing any state.
func dryRun(app *App, f *runFlags, argv []string, env map[string]string, memMiB int) error {
	prof, err := plan.ParseProfile(f.profile)
	if err != nil {
		return exitCode(ExitUsage, err)
	}
	keys := evidence.SortedKeys(env)
	// Parsing the network request resolves nothing: names stay names.
	netCfg, err := f.net.config(app)
	if err != nil {
		return exitCode(ExitUsage, err)
	}
	netReq := runtime.UpOptions{Network: netCfg}.PlanNetwork()
	req := plan.Request{EnvKeys: keys, Network: netReq, AckPermissive: plan.PermissiveAcknowledged(nil)}
	verdict, reason := "admit", ""
	if err := prof.Validate(req); err != nil {
		verdict, reason = "refuse", err.Error()
	}
	img := f.image
	if img == "" {
		img = "minimal"
	}
	inv := evidence.RedactInvocation(argv, env)
	obj := map[string]any{
		"schema_version": 1, "dry_run": true, "will_execute": false,
		"profile": string(prof), "verdict": verdict,
		"invocation": map[string]any{"argv_len": inv.ArgvLen, "argv_sha256": inv.ArgvSHA256, "env_keys": keys,
			"workdir_set": f.workdir != "", "stdin_forwarded": f.stdin || !isTerminal(app.Stdin)},
		"resources": map[string]any{"cpus": f.cpus, "memory_mib": memMiB, "timeout_secs": int(f.timeout / time.Second)},
		"image":     img,
		"network":   map[string]any{"mode": string(netReq.Mode), "allow": append([]string{}, netReq.Allow...)},
		"receipt":   map[string]any{"requested": f.receipt != ""},
	}
	if reason != "" {
		obj["reason"] = reason
	}
	if f.jsonOut {
		writeJSON(app.Stdout, obj)
	} else {
		fmt.Fprintf(app.Stdout, "dry run: would %s (profile %s)\n", verdict, prof)
		if reason != "" {
			fmt.Fprintf(app.Stdout, "  reason:    %s\n", reason)
		}
		fmt.Fprintf(app.Stdout, "  command:   %d args, sha256 %s\n", inv.ArgvLen, inv.ArgvSHA256)
		fmt.Fprintf(app.Stdout, "  env keys:  %s\n", strings.Join(keys, ", "))
		fmt.Fprintf(app.Stdout, "  resources: %d cpu, %d MiB, timeout %s\n", f.cpus, memMiB, f.timeout)
		network := string(netReq.Mode)
		if len(netReq.Allow) > 0 {
			network += " " + strings.Join(netReq.Allow, ", ")
		}
		fmt.Fprintf(app.Stdout, "  image:     %s\n  network:   %s\n  receipt:   %v\n", img, network, f.receipt != "")
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

// isBadImage reports errors that mean the caller named something wrong.
func isBadImage(err error) bool {
	var ut *image.UnknownTemplateError
	var up *image.UnknownPackageError
	var me *manifest.Error
	var ml manifest.ErrorList
	return errors.As(err, &ut) || errors.As(err, &up) || errors.As(err, &me) || errors.As(err, &ml) ||
		errors.Is(err, image.ErrNoImage)
}
