package cli

import (
	"os"

	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/supervisor"
	"github.com/spf13/cobra"
)

func init() { register(newSuperviseCmd) }

// newSuperviseCmd is the hidden command mvmctl re-executes as a sandbox's
// supervisor; fd 3 is the ready pipe.
func newSuperviseCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:    runtime.SupervisorCommand + " DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ready := os.NewFile(3, "ready")
			if err := supervisor.Run(args[0], ready, auditHook(app)); err != nil {
				return exitCode(1, err)
			}
			return nil
		},
	}
}
