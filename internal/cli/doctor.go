package cli

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
	"github.com/mvm-sandbox/mvm/internal/hostsetup"
	"github.com/spf13/cobra"
)

func init() {
	register(newDoctorCmd)
	register(newSetupCmd)
}

func newDoctorCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the host prerequisites (exit 1 when something required is missing)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			checks := hostsetup.Run(app.Dirs, rt.Agent)
			allOK := true
			for _, c := range checks {
				if c.Required && !c.OK {
					allOK = false
				}
			}
			if jsonOut {
				writeJSON(app.Stdout, map[string]any{
					"schema_version": 1, "checks": checks, "accel": qemu.DetectAccel().Accel, "all_ok": allOK,
				})
			} else {
				tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
				for _, c := range checks {
					mark := "ok"
					if !c.OK {
						mark = "missing"
						if !c.Required {
							mark = "optional"
						}
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, mark, c.Info)
					if !c.OK && c.Fix != "" {
						fmt.Fprintf(tw, "\t\tfix: %s\n", c.Fix)
					}
				}
				tw.Flush()
			}
			if !allOK {
				return &ExitError{Code: 1, Err: errors.New("required prerequisites are missing (see fix lines)"), Silent: jsonOut}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the report as JSON")
	return cmd
}

func newSetupCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:   "setup",
		Short: "Install what is missing: Debian packages (as root) and the guest kernel",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := hostsetup.Install(cmd.Context(), app.Dirs, app.Stderr); err != nil {
				return exitCode(1, err)
			}
			fmt.Fprintln(app.Stderr, "setup complete; `mvmctl doctor` shows the details")
			return nil
		},
	}
}
