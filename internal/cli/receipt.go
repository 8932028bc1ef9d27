package cli

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/runtime"
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
		keyPaths []string
		anyKey   bool
		jsonOut  bool
		inAudit  bool
	)
	cmd := &cobra.Command{
		Use:   "verify PATH",
		Short: "Verify a receipt offline (exit 0 valid, 1 invalid, 2 usage error)",
		Long: `Verify a signed run receipt offline and print every check performed.

By default the receipt must be signed by this host's key
(<data dir>/keys/host-signer.pub) or by a key listed in
<data dir>/keys/trusted-keys (one base64 key per line); with neither the
check fails. --key FILE (repeatable; the raw 32-byte key, its base64 text,
or a list with one base64 key per line) trusts exactly the keys given.
--any-key checks the receipt against the key it embeds: that proves it was
not altered after signing, not who signed it, and the output says so.
With --audit the local audit chain must hold the entry the receipt names.`,
		Args: evArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if anyKey && len(keyPaths) > 0 {
				return evUsage(errors.New("--any-key and --key exclude each other"))
			}
			var opts runtime.VerifyReceiptOptions
			opts.AnyKey, opts.Audit = anyKey, inAudit
			for _, p := range keyPaths {
				ks, err := evidence.LoadKeyList(p)
				if err != nil {
					return evUsage(fmt.Errorf("--key: %w", err))
				}
				opts.Keys = append(opts.Keys, ks...)
			}
			data, err := readLimited(args[0], evidence.MaxReceiptBytes+1)
			if err != nil {
				return evUsage(err)
			}
			rt, err := app.runtime()
			if err != nil {
				return exitCode(1, err)
			}
			rep, verr := rt.VerifyReceipt(data, opts)
			if rep == nil {
				return exitCode(1, verr)
			}
			if jsonOut {
				out := struct {
					Path string `json:"path"`
					*runtime.ReceiptVerification
					Error string `json:"error,omitempty"`
				}{Path: args[0], ReceiptVerification: rep}
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
				switch {
				case verr != nil:
					fmt.Fprintf(app.Stdout, "INVALID: %v\n", verr)
					if errors.Is(verr, evidence.ErrNoTrustedKey) || (len(rep.TrustedFrom) == 0 && !anyKey) {
						fmt.Fprintf(app.Stdout, "no trusted key: give the signer's public key with --key FILE, list it in %s, or use --any-key to check integrity only\n",
							filepath.Join(app.Dirs.Keys(), evidence.TrustedKeysFile))
					}
				case anyKey:
					p := rep.Payload
					fmt.Fprintf(app.Stdout, "INTEGRITY ONLY (--any-key): receipt %s is intact and signed by the key it embeds (%s), which claims to be %s; who signed it was NOT checked\n",
						p.ReceiptID, p.PublicKeySHA256, p.SignerID)
				default:
					p := rep.Payload
					fmt.Fprintf(app.Stdout, "valid: receipt %s, sandbox %s, exit code %d, signed by %s (trusted key %s)\n",
						p.ReceiptID, p.SandboxID, p.ExitCode, p.SignerID, p.PublicKeySHA256)
				}
			}
			if verr != nil {
				return &ExitError{Code: 1, Err: verr, Silent: true}
			}
			return nil
		},
	}
	evFlagErrors(cmd)
	cmd.Flags().StringArrayVar(&keyPaths, "key", nil, "trust only the public key(s) in FILE (raw 32 bytes, base64, or one base64 key per line); repeatable")
	cmd.Flags().StringArrayVar(&keyPaths, "pubkey", nil, "same as --key")
	cmd.Flags().MarkHidden("pubkey")
	cmd.Flags().BoolVar(&anyKey, "any-key", false, "accept the key the receipt embeds: checks integrity, not who signed it")
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
