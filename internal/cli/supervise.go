package cli

import (
	"os"
	"path/filepath"

	"github.com/mvm-sandbox/mvm/internal/evidence"
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
			// The plan the supervisor boots from must be signed by this
			// host's key (admission wrote it moments ago).
			pub, err := evidence.LoadPublicKey(filepath.Join(app.Dirs.Keys(), evidence.PublicKeyFile))
			if err != nil {
				pub = nil // refused below: no key, no boot
			}
			// Snapshots and pause to disk are signed with the same key.
			signer, err := evidence.LoadOrCreateSigner(app.Dirs.Keys())
			if err != nil {
				signer = nil // refused when asked for
			}
			if err := supervisor.RunWith(args[0], ready, supervisor.Options{Events: auditHook(app), TrustedKey: pub, RequireKey: true, Signer: signer}); err != nil {
				return exitCode(1, err)
			}
			return nil
		},
	}
}
