package cli

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/volume"
	"github.com/spf13/cobra"
)

func init() { register(newVolumeCmd) }

func volumeExit(err error) error {
	switch {
	case errors.Is(err, volume.ErrNotFound):
		return exitCode(ExitNotFound, err)
	case errors.Is(err, volume.ErrInvalid):
		return exitCode(ExitUsage, err)
	}
	return exitCode(1, err)
}

// volumeJSON is a volume with the sandboxes holding it.
func volumeJSON(rt *runtime.Runtime, v *volume.Info) map[string]any {
	return map[string]any{
		"name": v.Name, "size_bytes": v.SizeBytes, "allocated_bytes": v.AllocatedBytes,
		"created": v.Created.Format(time.RFC3339), "path": v.Path,
		"attached_to": rt.VolumeHolders(v.Name),
	}
}

func newVolumeCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "volume",
		Short: "Persistent volumes: sparse ext4 images attached with -v NAME:/path",
	}
	var size string
	var jsonOut bool
	create := &cobra.Command{
		Use:     "create NAME [--size 1G]",
		Short:   "Create a volume (a sparse ext4 image; only what is written takes space)",
		Example: "  mvmctl volume create cache --size 2G\n  mvmctl run -v cache:/cache -- sh -c 'date >> /cache/log'",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := volume.ParseSize(size)
			if err != nil {
				return exitCode(ExitUsage, err)
			}
			rt, err := app.runtime()
			if err != nil {
				return exitCode(ExitMvm, err)
			}
			v, err := rt.Volumes().Create(args[0], n, time.Now())
			if errors.Is(err, volume.ErrExists) {
				return exitCode(1, err)
			}
			if err != nil {
				return volumeExit(err)
			}
			if jsonOut {
				return writeJSON(app.Stdout, volumeJSON(rt, v))
			}
			fmt.Fprintln(app.Stdout, v.Name)
			return nil
		},
	}
	create.Flags().StringVar(&size, "size", "1G", "size, e.g. 512M, 1G, 10G")
	create.Flags().BoolVar(&jsonOut, "json", false, "print JSON")

	var lsJSON bool
	ls := &cobra.Command{
		Use:   "ls [--json]",
		Short: "List volumes and the sandboxes they are attached to",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return exitCode(ExitMvm, err)
			}
			list, err := rt.Volumes().List()
			if err != nil {
				return exitCode(1, err)
			}
			if lsJSON {
				rows := []map[string]any{}
				for _, v := range list {
					rows = append(rows, volumeJSON(rt, v))
				}
				return writeJSON(app.Stdout, map[string]any{"schema_version": 1, "volumes": rows})
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSIZE\tUSED\tCREATED\tATTACHED TO")
			for _, v := range list {
				holders := strings.Join(rt.VolumeHolders(v.Name), ",")
				if holders == "" {
					holders = "-"
				}
				fmt.Fprintf(tw, "%s\t%dM\t%dM\t%s\t%s\n", v.Name, v.SizeBytes>>20, v.AllocatedBytes>>20, v.Created.Format(time.RFC3339), holders)
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&lsJSON, "json", false, "print JSON")

	inspect := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show one volume as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return exitCode(ExitMvm, err)
			}
			v, err := rt.Volumes().Inspect(args[0])
			if err != nil {
				return volumeExit(err)
			}
			return writeJSON(app.Stdout, volumeJSON(rt, v))
		},
	}

	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a volume and its data (refused while a sandbox has it attached)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return exitCode(ExitMvm, err)
			}
			if err := rt.Volumes().Remove(args[0]); err != nil {
				return volumeExit(err)
			}
			fmt.Fprintf(app.Stderr, "volume %s removed\n", args[0])
			return nil
		},
	}

	var newSize string
	resize := &cobra.Command{
		Use:   "resize NAME --size SIZE",
		Short: "Grow a volume that no sandbox has attached (shrinking is refused)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := volume.ParseSize(newSize)
			if err != nil {
				return exitCode(ExitUsage, err)
			}
			rt, err := app.runtime()
			if err != nil {
				return exitCode(ExitMvm, err)
			}
			v, err := rt.Volumes().Resize(args[0], n)
			if err != nil {
				return volumeExit(err)
			}
			fmt.Fprintf(app.Stdout, "%s %dM\n", v.Name, v.SizeBytes>>20)
			return nil
		},
	}
	resize.Flags().StringVar(&newSize, "size", "", "new size, e.g. 2G")
	resize.MarkFlagRequired("size")
	cmd.AddCommand(create, ls, inspect, rm, resize)
	return cmd
}
