package cli

import (
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/secret"
	"github.com/spf13/cobra"
)

func init() { register(newSecretCmd) }

func newSecretCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secret",
		Short: "Store named secrets and hand them to sandboxes (--secret); values never leave the store except into a guest",
	}
	var fromFile string
	set := &cobra.Command{
		Use:   "set NAME [--from-file PATH]",
		Short: "Store a secret read from stdin (one trailing newline dropped) or a file (taken as is); never from argv",
		Example: `  printf %s "$OPENAI_API_KEY" | mvmctl secret set openai
  mvmctl secret set tls-key --from-file ./key.pem`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := secret.ValidateName(name); err != nil {
				return exitCode(ExitUsage, err)
			}
			var (
				val []byte
				err error
			)
			if fromFile != "" {
				f, ferr := os.Open(fromFile)
				if ferr != nil {
					return exitCode(ExitUsage, fmt.Errorf("--from-file: %w", ferr))
				}
				val, err = secret.ReadValue(f, false)
				f.Close()
			} else {
				if isTerminal(app.Stdin) {
					fmt.Fprintf(app.Stderr, "value for %s (end with Ctrl-D): ", name)
				}
				val, err = secret.ReadValue(app.Stdin, true)
			}
			if err != nil {
				return exitCode(ExitUsage, err)
			}
			rt, err := app.runtime()
			if err != nil {
				return exitCode(ExitMvm, err)
			}
			if err := rt.SetSecret(name, val, time.Now()); err != nil {
				return exitCode(1, err)
			}
			fmt.Fprintf(app.Stderr, "secret %s stored\n", name)
			return nil
		},
	}
	set.Flags().StringVar(&fromFile, "from-file", "", "read the value from this file")

	var jsonOut bool
	ls := &cobra.Command{
		Use:   "ls [--json]",
		Short: "List secrets: names and times, never values",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return exitCode(ExitMvm, err)
			}
			list, err := rt.Secrets().List()
			if err != nil {
				return exitCode(1, err)
			}
			if jsonOut {
				return writeJSON(app.Stdout, map[string]any{"schema_version": 1, "secrets": list})
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCREATED\tUPDATED")
			for _, m := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", m.Name, m.Created.Format(time.RFC3339), m.Updated.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&jsonOut, "json", false, "print JSON")

	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a secret (sandboxes already given it keep what they have)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return exitCode(ExitMvm, err)
			}
			err = rt.RemoveSecret(args[0])
			var inUse *runtime.SecretInUseError
			switch {
			case errors.As(err, &inUse):
				return exitCode(1, err)
			case errors.Is(err, secret.ErrNotFound):
				return exitCode(ExitNotFound, err)
			case errors.Is(err, secret.ErrInvalid):
				return exitCode(ExitUsage, err)
			case err != nil:
				return exitCode(1, err)
			}
			fmt.Fprintf(app.Stderr, "secret %s removed\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(set, ls, rm)
	return cmd
}

// secretInUse refuses to change a secret that running sandboxes hold: the
// redaction of their output needs the value they were given.
