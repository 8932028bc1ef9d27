package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/spf13/cobra"
)

// newImagePullCmd and newImageImportCmd are `image pull` and `image import`.
func newImagePullCmd(app *App) *cobra.Command {
	var (
		platform      string
		requireDigest bool
		refresh       bool
		jsonOut       bool
	)
	cmd := &cobra.Command{
		Use:   "pull REF",
		Short: "Pull an OCI image (python:3.12-slim, ghcr.io/org/app@sha256:...) and make it a sandbox image",
		Long: `Pull resolves REF on its registry (credentials from the Docker config and its
credential helpers, as docker finds them), downloads the layers for --platform,
verifying each layer's digest as it streams, unpacks them, adds mvm's image
configuration and packs the tree like a template image. The resolved manifest
digest is recorded in the image (image ls, inspect, plans and receipts).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ociRun(cmd.Context(), app, jsonOut, func(rt runtimeAPI, p func(image.Event), l func(image.PullEvent)) (*image.Artifact, error) {
				return rt.Pull(cmd.Context(), args[0], image.PullOptions{Platform: platform, RequireDigest: requireDigest, Refresh: refresh}, p, l)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&platform, "platform", "", "os/arch of a multi-platform image (default linux/amd64)")
	f.BoolVar(&requireDigest, "require-digest", false, "refuse a reference that is not pinned by digest (@sha256:...)")
	f.BoolVar(&refresh, "refresh", false, "unpack and pack again even when cached")
	f.BoolVar(&jsonOut, "json", false, "print NDJSON progress events (build phases and per-layer bytes), then {\"artifact\": {...}}")
	return cmd
}

func newImageImportCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "import FILE",
		Short: "Make a sandbox image of a `docker save` archive or an OCI image layout (tarball or directory)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ociRun(cmd.Context(), app, jsonOut, func(rt runtimeAPI, p func(image.Event), l func(image.PullEvent)) (*image.Artifact, error) {
				return rt.Import(cmd.Context(), args[0], p, l)
			})
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print NDJSON progress events, then {\"artifact\": {...}}")
	return cmd
}

// runtimeAPI is what pull and import need of the runtime.
type runtimeAPI interface {
	Pull(ctx context.Context, ref string, o image.PullOptions, progress func(image.Event), layers func(image.PullEvent)) (*image.Artifact, error)
	Import(ctx context.Context, file string, progress func(image.Event), layers func(image.PullEvent)) (*image.Artifact, error)
}

func ociRun(ctx context.Context, app *App, jsonOut bool, do func(runtimeAPI, func(image.Event), func(image.PullEvent)) (*image.Artifact, error)) error {
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
		msg := e.Message
		if msg != "" {
			msg = ": " + msg
		}
		fmt.Fprintf(app.Stderr, "[%6.1fs] %-9s %s%s\n", time.Since(start).Seconds(), e.Phase, e.Status, msg)
	}
	layers := func(e image.PullEvent) {
		mu.Lock()
		defer mu.Unlock()
		if jsonOut {
			_ = enc.Encode(map[string]any{"phase": image.PhaseUnpack, "status": "layer", "layer": e})
			return
		}
		if !tty && !e.Final {
			return
		}
		end := "\r"
		if e.Final {
			end = "\n"
		}
		fmt.Fprintf(app.Stderr, "\033[2K  layer %d/%d %s  %s / %s%s", e.Layer, e.Of, shortDigest(e.Digest), imgHumanBytes(e.Done), imgHumanBytes(e.Total), end)
	}
	rt, err := app.runtime()
	if err != nil {
		return err
	}
	a, err := do(rt, progress, layers)
	if err != nil {
		if jsonOut {
			_ = enc.Encode(map[string]string{"error": err.Error()})
			return &ExitError{Code: exitFor(err), Err: err, JSONDone: true}
		}
		return err
	}
	if jsonOut {
		return enc.Encode(map[string]any{"artifact": a})
	}
	printRepinned(app, a.Repinned)
	how := "made"
	if a.Cached {
		how = "cached"
	}
	// the artifact, then the manifest digest it was made from (the same
	// digest pulled under another name is the same artifact)
	fmt.Fprintf(app.Stdout, "%s  manifest %s  %s  %s in %.1fs\n", a.Digest, a.OCI.Digest, imgHumanBytes(a.Size), how, time.Since(start).Seconds())
	return nil
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}
