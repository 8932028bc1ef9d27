package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/manifest"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func init() { register(newBuildCmd) }

func newBuildCmd(app *App) *cobra.Command {
	var (
		template string
		jsonOut  bool
		refresh  bool
		profile  string
	)
	cmd := &cobra.Command{
		Use:   "build [DIR|FILE|IR.json]",
		Short: "Build a root filesystem image from DIR/mvm.toml or a template",
		Long: `Build a root filesystem image.

With DIR (default "."), reads DIR/mvm.toml (see docs/manifest.md) and builds
its template plus packages, files and configuration. --template overrides the
manifest's template. Without DIR and with no mvm.toml in the current
directory, --template builds the bare template.

With FILE (a declaration: .py with @mvm.app, .ts/.js with mvm.app, a
record-mode recording) or IR.json, builds the declared workload (see
docs/declarations.md).

Images are content-addressed and cached: building the same input again
resolves from the cache. Templates: ` + fmt.Sprint(image.TemplateNames()),
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := ""
			if len(args) == 1 && runtime.IsWorkloadFile(args[0]) {
				return buildWorkloadRun(cmd, app, args[0], refresh, jsonOut)
			}
			switch {
			case len(args) == 1:
				dir = args[0]
				if _, err := os.Stat(filepath.Join(dir, manifest.FileName)); err != nil {
					return exitCode(ExitUsage, fmt.Errorf("no %s in %s", manifest.FileName, dir))
				}
			default:
				if _, err := os.Stat(manifest.FileName); err == nil {
					dir = "."
				} else if template == "" {
					return exitCode(ExitUsage, fmt.Errorf("no %s in the current directory: give a DIR that has one, or --template NAME", manifest.FileName))
				}
			}
			if profile != "" && dir != "" {
				return exitCode(ExitUsage, errors.New("--profile applies to bare template builds; set profile in mvm.toml"))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return buildRun(ctx, app, dir, template, image.BuildOptions{Refresh: refresh, Profile: profile}, jsonOut)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&template, "template", "t", "", "template to build from (overrides the manifest's)")
	f.BoolVar(&jsonOut, "json", false, "print NDJSON progress events, then {\"artifact\": {...}}")
	f.BoolVar(&refresh, "refresh", false, "rebuild even if cached (picks up Debian updates); an OCI image = REF / mvm.oci_image(REF) is resolved on the registry again instead of using its pinned digest")
	f.StringVar(&profile, "profile", "", "profile of a bare template image: dev (default) or sealed")
	return cmd
}

func imgIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func buildRun(ctx context.Context, app *App, dir, template string, opts image.BuildOptions, jsonOut bool) error {
	if ctx == nil {
		ctx = context.Background()
	}
	start := time.Now()
	var mu sync.Mutex
	enc := json.NewEncoder(app.Stdout)
	tty := imgIsTerminal(app.Stderr)
	progress := func(e image.Event) {
		mu.Lock()
		defer mu.Unlock()
		if jsonOut {
			_ = enc.Encode(e)
			return
		}
		if e.Status == image.StatusProgress && !tty {
			return
		}
		msg := e.Message
		if msg != "" {
			msg = ": " + msg
		}
		fmt.Fprintf(app.Stderr, "[%6.1fs] %-9s %s%s\n", time.Since(start).Seconds(), e.Phase, e.Status, msg)
	}
	rt, err := app.runtime()
	if err != nil {
		return err
	}
	a, err := rt.Build(ctx, dir, template, opts, progress)
	if err != nil {
		if jsonOut {
			_ = enc.Encode(map[string]string{"error": err.Error()})
			return &ExitError{Code: exitFor(err), Err: err, JSONDone: true}
		}
		return err
	}
	// The image's ready snapshot, so that its first up is warm (an image
	// whose manifest asks for a network boots cold anyway: no NIC is in a
	// ready snapshot).
	var ready any
	if (a.Network == "" || a.Network == "none") && os.Getenv(runtime.WarmEnv) != "0" {
		t0 := time.Now()
		progress(image.Event{Time: time.Now(), Phase: "ready", Status: image.StatusStarted, Message: "recording the ready snapshot (docs/snapshots.md)"})
		how, tag, err := rt.RecordReady(ctx, a.Digest, nil)
		if err != nil {
			// The image is built; only its first start will be cold.
			progress(image.Event{Time: time.Now(), Phase: "ready", Status: image.StatusFailed, Message: err.Error()})
		} else {
			if how == runtime.StartRestored {
				how = "found"
			} else {
				how = "recorded"
			}
			ready = map[string]any{"snapshot": tag, "how": how, "ms": time.Since(t0).Milliseconds()}
			progress(image.Event{Time: time.Now(), Phase: "ready", Status: image.StatusDone, Message: how + " ready snapshot " + tag})
		}
	}
	if jsonOut {
		return enc.Encode(map[string]any{"artifact": a, "ready": ready})
	}
	printRepinned(app, a.Repinned)
	how := "built"
	if a.Cached {
		how = "cached"
	}
	fmt.Fprintf(app.Stdout, "%s  %s  %s  %s in %.1fs\n", a.Digest, a.Template, imgHumanBytes(a.Size), how, time.Since(start).Seconds())
	return nil
}

// refreshUsage is the --refresh of up and run.
const refreshUsage = "with DIR (mvm.toml's image = REF) or a declaration (mvm.oci_image(REF)): resolve the OCI reference on its registry again instead of using its pinned digest, and move the pin (a template base: nothing to do)"

// printRepinned tells, on stderr, that a refresh moved an OCI reference's
// pin (--json carries it as "repinned").
func printRepinned(app *App, r *image.Repin) {
	if r != nil {
		fmt.Fprintf(app.Stderr, "mvmctl: %s moved: %s → %s (pinned now)\n", r.Ref, r.From, r.To)
	}
}

func imgHumanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d B", n)
	}
}
