package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

func init() { register(newStatsCmd) }

func newStatsCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "stats NAME",
		Short: "Show guest metrics: memory, load, processes, uptime, disk",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, stop := fsCtx()
			defer stop()
			st, err := rt.Stats(ctx, args[0])
			if err != nil {
				return fsError(err, "stats")
			}
			if jsonOut {
				return writeJSON(app.Stdout, map[string]any{
					"schema_version": 1, "sandbox": args[0],
					"mem_total_bytes": st.MemTotalBytes, "mem_available_bytes": st.MemAvailableBytes,
					"load1": st.Load1, "load5": st.Load5, "load15": st.Load15,
					"processes": st.Processes, "uptime_seconds": st.UptimeSeconds,
					"disk_total_bytes": st.DiskTotalBytes, "disk_free_bytes": st.DiskFreeBytes,
				})
			}
			used := st.MemTotalBytes - min(st.MemAvailableBytes, st.MemTotalBytes)
			fmt.Fprintf(app.Stdout, "memory:    %s used of %s (%s available)\n", human(used), human(st.MemTotalBytes), human(st.MemAvailableBytes))
			fmt.Fprintf(app.Stdout, "load:      %.2f %.2f %.2f\n", st.Load1, st.Load5, st.Load15)
			fmt.Fprintf(app.Stdout, "processes: %d\n", st.Processes)
			fmt.Fprintf(app.Stdout, "uptime:    %s\n", (time.Duration(st.UptimeSeconds * float64(time.Second))).Round(time.Second))
			fmt.Fprintf(app.Stdout, "disk (/):  %s free of %s\n", human(st.DiskFreeBytes), human(st.DiskTotalBytes))
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func human(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit && exp < 4; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTP"[exp])
}
