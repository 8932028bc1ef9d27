package cli

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/spf13/cobra"
)

func init() { register(newReceiptCmd) }

// evUsage wraps err as a usage error (exit 2).
func evUsage(err error) error { return exitCode(2, err) }

// evJSON writes v as indented JSON.
func evJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// evArgs makes cobra's argument errors usage errors.
func evArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return evUsage(err)
		}
		return nil
	}
}

func evFlagErrors(cmd *cobra.Command) {
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return evUsage(err) })
}

// evLoadPubKey reads --pubkey FILE: raw 32 bytes or base64 text.
func evLoadPubKey(path string) (ed25519.PublicKey, error) {
	k, err := evidence.LoadPublicKey(path)
	if err != nil {
		return nil, evUsage(fmt.Errorf("--pubkey: %w", err))
	}
	return k, nil
}

func newReceiptCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "receipt",
		Short: "Work with signed run receipts",
		Args:  evArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return evUsage(errors.New("missing subcommand (verify)"))
		},
	}
	evFlagErrors(cmd)
	cmd.AddCommand(newReceiptVerifyCmd(app))
	return cmd
}

func newReceiptVerifyCmd(app *App) *cobra.Command {
	var (
		pubPath string
		jsonOut bool
		inAudit bool
	)
	cmd := &cobra.Command{
		Use:   "verify PATH",
		Short: "Verify a receipt offline (exit 0 valid, 1 invalid, 2 usage error)",
		Long: `Verify a signed run receipt offline and print every check performed.

Without --pubkey the receipt is checked against the public key it embeds,
which proves it was not altered but not who signed it. With --pubkey FILE
(the raw 32-byte key, such as <data dir>/keys/host-signer.pub, or its
base64 text) the embedded key must also be that key. With --audit the local
audit chain must hold the entry the receipt names.`,
		Args: evArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			var pub ed25519.PublicKey
			if pubPath != "" {
				k, err := evLoadPubKey(pubPath)
				if err != nil {
					return err
				}
				pub = k
			}
			data, err := readLimited(args[0], evidence.MaxReceiptBytes+1)
			if err != nil {
				return evUsage(err)
			}
			rep, verr := evidence.VerifyReceipt(data, pub)
			if verr == nil && inAudit {
				chain := evidence.ChainPath(app.Dirs.Audit())
				rec, err := evidence.CheckReceiptInChain(rep.Payload, chain)
				c := evidence.Check{Name: "audit_entry", OK: err == nil}
				if err != nil {
					c.Detail = err.Error()
					rep.OK, rep.Failed = false, c.Name
					verr = &evidence.ReceiptError{Check: c.Name, Reason: err.Error()}
				} else {
					c.Detail = fmt.Sprintf("entry %d in %s", rec.Entry.Seq, chain)
				}
				rep.Checks = append(rep.Checks, c)
			}
			if jsonOut {
				out := struct {
					Path string `json:"path"`
					*evidence.ReceiptReport
					Error string `json:"error,omitempty"`
				}{Path: args[0], ReceiptReport: rep}
				if verr != nil {
					out.Error = verr.Error()
				}
				evJSON(app.Stdout, out)
			} else {
				fmt.Fprintf(app.Stdout, "receipt %s\n", args[0])
				tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
				for _, c := range rep.Checks {
					mark := "OK"
					switch {
					case c.Skipped:
						mark = "SKIPPED"
					case !c.OK:
						mark = "FAILED"
					}
					fmt.Fprintf(tw, "  %s\t%s\t%s\n", c.Name, mark, c.Detail)
				}
				tw.Flush()
				if verr == nil {
					p := rep.Payload
					fmt.Fprintf(app.Stdout, "valid: receipt %s, sandbox %s, exit code %d, signed by %s (key %s)\n",
						p.ReceiptID, p.SandboxID, p.ExitCode, p.SignerID, p.PublicKeySHA256)
				} else {
					fmt.Fprintf(app.Stdout, "INVALID: %v\n", verr)
				}
			}
			if verr != nil {
				return &ExitError{Code: 1, Err: verr, Silent: true}
			}
			return nil
		},
	}
	evFlagErrors(cmd)
	cmd.Flags().StringVar(&pubPath, "pubkey", "", "public key FILE the receipt must be signed by (raw 32 bytes or base64)")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the report as JSON")
	cmd.Flags().BoolVar(&inAudit, "audit", false, "also check that the local audit chain holds the receipt's entry")
	return cmd
}

// readLimited reads at most limit bytes of path (more means the file is
// too large and the caller's size check fails).
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}
