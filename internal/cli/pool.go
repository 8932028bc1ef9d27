package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/spf13/cobra"
)

func init() {
	register(newPoolCmd)
	register(newPoolFillCmd)
}

func newPoolCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "Keep idle sandboxes of an image ready for up, run and the SDK to take (warm pools)",
		Long: `A warm pool keeps N idle sandboxes of one image and shape (run profile,
CPUs, memory, disk) running. up, run and the SDK's Sandbox.create take one
when they ask for the same image and shape, with no network, host
directories or volumes, instead of starting a VM; the taker starts a
replacement in the background. The caller's plan is admitted as for any
sandbox, and the guest gets a fresh identity (hostname, machine-id, RNG).

Pooled sandboxes are ordinary sandboxes in the state "pooled": ls -a shows
them, and "pool set IMAGE 0" removes them. There is no daemon.`,
	}
	cmd.AddCommand(newPoolSetCmd(app), newPoolLsCmd(app))
	return cmd
}

func newPoolSetCmd(app *App) *cobra.Command {
	var (
		o       runtime.PoolOptions
		memory  string
		disk    string
		jsonOut bool
	)
	cmd := &cobra.Command{
		Use:   "set IMAGE N",
		Short: "Keep N idle sandboxes of IMAGE ready (0 removes the pool); returns once they are",
		Example: `  mvmctl pool set minimal 2
  mvmctl pool set python --memory 1G 4
  mvmctl pool set minimal 0`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 0 || n > runtime.MaxPoolSize {
				return exitCode(ExitUsage, fmt.Errorf("pool size %q: want a number from 0 to %d", args[1], runtime.MaxPoolSize))
			}
			o.Image, o.Size = args[0], n
			if o.Image == "minimal" {
				o.Image = ""
			}
			if cmd.Flags().Changed("memory") {
				if o.MemoryMiB, err = parseSize("memory", memory); err != nil {
					return err
				}
			}
			if cmd.Flags().Changed("disk") {
				if o.DiskMiB, err = parseSize("disk", disk); err != nil {
					return err
				}
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, sig, stop := signalContext(context.Background())
			defer stop()
			if !jsonOut {
				o.Progress = func(msg string) { fmt.Fprintln(app.Stderr, msg) }
			}
			ps, err := rt.SetPool(ctx, o)
			if s := sig(); s != nil {
				return &ExitError{Code: signalExit(s), Err: fmt.Errorf("interrupted by %v; the pool keeps the members that were ready", s)}
			}
			if err != nil {
				return exitCode(bootExit(err), err)
			}
			if jsonOut {
				return writeJSON(app.Stdout, poolJSON(ps))
			}
			fmt.Fprintf(app.Stdout, "pool %s: %s, %d ready\n", ps.ID, ps.ImageName, len(ps.Ready))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&o.CPUs, "cpus", 0, "virtual CPUs of each member (default: the manifest's, else 1)")
	fl.StringVar(&memory, "memory", "", "guest memory of each member, e.g. 512M, 1G (default: the manifest's, else 512M)")
	fl.StringVar(&disk, "disk", "", "writable layer of each member (default: the manifest's, else 4G)")
	fl.StringVar(&o.RunProfile, "profile", "standard", "run profile the members are admitted under: restrictive, standard or dev")
	fl.BoolVar(&jsonOut, "json", false, "print the pool as JSON (the object `pool ls --json` lists)")
	return cmd
}

func newPoolLsCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List warm pools with their ready and starting members",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			pools, err := rt.Pools()
			if err != nil {
				return err
			}
			if jsonOut {
				rows := make([]map[string]any, 0, len(pools))
				for _, p := range pools {
					rows = append(rows, poolJSON(p))
				}
				return writeJSON(app.Stdout, rows)
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "POOL\tIMAGE\tPROFILE\tCPUS\tMEMORY\tSIZE\tREADY\tSTARTING")
			for _, p := range pools {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%dM\t%d\t%d\t%d\n", p.ID, p.ImageName, p.Shape.RunProfile,
					p.Shape.CPUs, p.Shape.MemoryMiB, p.Size, len(p.Ready), len(p.Starting))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print a JSON array")
	return cmd
}

// poolJSON is the public shape of a pool in --json output.
func poolJSON(p *runtime.PoolStatus) map[string]any {
	return map[string]any{
		"schema_version": 1, "id": p.ID, "image": p.ImageName, "image_digest": p.Shape.ImageDigest,
		"run_profile": p.Shape.RunProfile, "cpus": p.Shape.CPUs, "memory_mib": p.Shape.MemoryMiB,
		"disk_mib": p.Shape.DiskMiB, "size": p.Size, "ready": p.Ready, "starting": p.Starting,
	}
}

// newPoolFillCmd is the hidden command a claim starts in the background
// to top its pool up again.
func newPoolFillCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:    runtime.PoolFillCommand + " POOL",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.ContainsAny(args[0], "/.") {
				return exitCode(ExitUsage, errors.New("bad pool id"))
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			return rt.FillPool(context.Background(), args[0])
		},
	}
}
