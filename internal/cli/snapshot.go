package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
	"github.com/mvm-sandbox/mvm/internal/termsafe"
	"github.com/spf13/cobra"
)

func init() { register(newSnapshotCmd) }

func newSnapshotCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save running sandboxes as snapshots, list and remove them (see docs/snapshots.md)",
	}
	cmd.AddCommand(newSnapshotSaveCmd(app), newSnapshotLsCmd(app), newSnapshotRmCmd(app))
	return cmd
}

// snapshotJSON is the public shape of a snapshot in --json output.
func snapshotJSON(tag string, m snapshot.Meta, onDisk int64) map[string]any {
	secrets := append([]string{}, m.Secrets...)
	obj := map[string]any{
		"tag": tag, "created": m.Created.Format(time.RFC3339),
		"source": m.SourceName, "source_id": m.SourceID,
		"image": m.ImageName, "image_digest": m.Match.ImageDigest,
		"memory_mib": m.Match.MemoryMiB, "cpus": m.Match.CPUs,
		"bytes": m.Size(), "disk_bytes": onDisk,
		"secrets": secrets, "holds_secrets": len(secrets) > 0,
		"save_ms": m.SaveMS, "match_key": m.Match.Key(),
	}
	return obj
}

func newSnapshotSaveCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "save NAME TAG",
		Short: "Save a running sandbox's memory, device state and disk as snapshot TAG (the sandbox keeps running)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, sig, stop := signalContext(context.Background())
			defer stop()
			m, err := rt.SaveSnapshot(ctx, args[0], args[1])
			if s := sig(); s != nil {
				return &ExitError{Code: signalExit(s), Err: fmt.Errorf("interrupted by %v", s)}
			}
			if err != nil {
				return err
			}
			if jsonOut {
				return writeJSON(app.Stdout, snapshotJSON(args[1], *m, m.Size()))
			}
			fmt.Fprintf(app.Stdout, "%s saved (%s, guest stopped %d ms)\n", args[1], humanBytes(m.Size()), m.SaveMS)
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the snapshot as JSON (the object `snapshot ls --json` lists)")
	return cmd
}

func newSnapshotLsCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List snapshots: size, created, source image, whether it holds secrets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			list, err := rt.ListSnapshots()
			if err != nil {
				return err
			}
			if jsonOut {
				rows := make([]map[string]any, 0, len(list))
				for _, in := range list {
					rows = append(rows, snapshotJSON(in.Tag, in.Meta, in.Bytes))
				}
				return writeJSON(app.Stdout, map[string]any{"schema_version": 1, "snapshots": rows})
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TAG\tSIZE\tCREATED\tIMAGE\tSOURCE\tSECRETS")
			for _, in := range list {
				m := in.Meta
				secrets := "no"
				if len(m.Secrets) > 0 {
					secrets = "yes (" + strings.Join(m.Secrets, ",") + ")"
				}
				if in.Invalid != "" {
					fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t%s\n", termsafe.Line(in.Tag), in.Invalid)
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", in.Tag, humanBytes(in.Bytes), m.Created.Local().Format("2006-01-02 15:04:05"),
					termsafe.Line(m.ImageName), termsafe.Line(m.SourceName), secrets)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, `print {"schema_version":1,"snapshots":[...]}`)
	return cmd
}

func newSnapshotRmCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:   "rm TAG",
		Short: "Remove a snapshot (sandboxes started from it are not affected)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			if err := rt.RemoveSnapshot(args[0]); err != nil {
				return err
			}
			fmt.Fprintln(app.Stdout, args[0], "removed")
			return nil
		},
	}
}

// humanBytes is n in B, KiB, MiB or GiB.
func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

var _ = runtime.SnapshotInfo{}
