package cli

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/spf13/cobra"
)

func init() { register(newAuditCmd) }

func newAuditCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Inspect and verify the signed audit chain",
		Long: `The audit chain is one append-only JSONL file, <data dir>/audit/chain.jsonl.
Each line is a signed entry linked to the previous one by its SHA-256.`,
		Args: evArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return evUsage(errors.New("missing subcommand (tail, verify, show)"))
		},
	}
	evFlagErrors(cmd)
	cmd.AddCommand(newAuditTailCmd(app), newAuditVerifyCmd(app), newAuditShowCmd(app))
	return cmd
}

func newAuditTailCmd(app *App) *cobra.Command {
	var (
		n        int
		follow   bool
		jsonOut  bool
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Print the last entries of the audit chain (-f follows new entries)",
		Args:  evArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if n < 0 {
				return evUsage(fmt.Errorf("-n must not be negative"))
			}
			if interval <= 0 {
				return evUsage(fmt.Errorf("--interval must be positive"))
			}
			rt, err := app.runtime()
			if err != nil {
				return exitCode(1, err)
			}
			// -n 0: print nothing now, start from the end.
			recs, off, err := rt.AuditTail(n)
			if err != nil {
				return err
			}
			for _, r := range recs {
				printAuditRecord(app.Stdout, r, jsonOut)
			}
			if !follow {
				return nil
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return followAudit(ctx, app.Stdout, rt, off, interval, jsonOut)
		},
	}
	evFlagErrors(cmd)
	cmd.Flags().IntVarP(&n, "lines", "n", 10, "number of entries to print")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing entries as they are appended, until interrupted")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print one JSON object per entry: {entry, hash, offset}")
	cmd.Flags().DurationVar(&interval, "interval", 500*time.Millisecond, "poll interval for --follow")
	cmd.Flags().MarkHidden("interval")
	return cmd
}

// followAudit polls the chain file and prints entries appended after off.
func followAudit(ctx context.Context, w io.Writer, rt *runtime.Runtime, off int64, every time.Duration, jsonOut bool) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		recs, next, err := rt.AuditSince(off)
		if err != nil {
			return err
		}
		for _, r := range recs {
			printAuditRecord(w, r, jsonOut)
		}
		off = next
	}
}

func printAuditRecord(w io.Writer, r evidence.Record, jsonOut bool) {
	if jsonOut {
		// The canonical entry line plus its hash and offset.
		fmt.Fprintf(w, "{\"entry\":%s,\"hash\":%q,\"offset\":%d}\n", r.Raw, r.Hash, r.Offset)
		return
	}
	e := r.Entry
	fmt.Fprintf(w, "%6d  %s  %-16s %-20s %s  %s\n", e.Seq, e.Time, e.Kind, e.Subject, formatAuditFields(e.Fields, true), r.Hash[:12])
}

// formatAuditFields renders fields as sorted k=v pairs; abbrev shortens
// sha256 values to 12 digits.
func formatAuditFields(f map[string]any, abbrev bool) string {
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		v := f[k]
		if l, ok := v.([]any); ok {
			ss := make([]string, len(l))
			for j, x := range l {
				ss[j] = fmt.Sprint(x)
			}
			parts[i] = k + "=" + strings.Join(ss, ",")
			continue
		}
		if h, ok := v.(string); ok && abbrev && evidence.IsHex64(h) {
			v = h[:12] + "…"
		}
		parts[i] = fmt.Sprintf("%s=%v", k, v)
	}
	return strings.Join(parts, " ")
}

func newAuditVerifyCmd(app *App) *cobra.Command {
	var (
		jsonOut bool
		pubPath string
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Verify the whole audit chain (exit 1 and the first bad position when broken)",
		Long: `Walk the whole chain and check, entry by entry: strict parse, canonical form,
schema, contiguous seq from 1, prev link, signer key and Ed25519 signature.
The first bad entry is reported with its seq, line and byte offset. A partial
last line left by an interrupted append is reported as a warning (exit 0);
the next append removes it. The key is <data dir>/keys/host-signer.pub
unless --pubkey is given.`,
		Args: evArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return exitCode(1, err)
			}
			path := rt.AuditChainPath()
			var pub ed25519.PublicKey
			if pubPath != "" {
				k, err := evLoadPubKey(pubPath)
				if err != nil {
					return err
				}
				pub = k
			}
			rep, err := rt.AuditVerify(pub)
			if err != nil {
				if errors.Is(err, runtime.ErrNoHostKey) {
					err = fmt.Errorf("%w; pass --pubkey FILE", err)
				}
				return exitCode(1, err)
			}
			if jsonOut {
				evJSON(app.Stdout, rep)
			} else {
				switch {
				case rep.Failure != nil:
					f := rep.Failure
					fmt.Fprintf(app.Stdout, "audit chain INVALID: %s\n", path)
					fmt.Fprintf(app.Stdout, "  first bad entry: seq %d (line %d, byte offset %d)\n", f.Seq, f.Line, f.Offset)
					fmt.Fprintf(app.Stdout, "  failed check:    %s: %s\n", f.Check, f.Reason)
					fmt.Fprintf(app.Stdout, "  valid up to entry %d\n", rep.HeadSeq)
				case rep.Entries == 0 && rep.Warning == "":
					fmt.Fprintf(app.Stdout, "audit chain OK: empty (%s)\n", path)
				default:
					fmt.Fprintf(app.Stdout, "audit chain OK: %d entries, head seq %d, head hash %s\n", rep.Entries, rep.HeadSeq, rep.HeadHash)
				}
				if rep.Warning != "" {
					fmt.Fprintf(app.Stdout, "warning: %s\n", rep.Warning)
				}
			}
			if rep.Failure != nil {
				return &ExitError{Code: 1, Err: rep.Failure, Silent: true}
			}
			return nil
		},
	}
	evFlagErrors(cmd)
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the report as JSON")
	cmd.Flags().StringVar(&pubPath, "pubkey", "", "public key FILE the chain must be signed by (default: this host's key)")
	return cmd
}

func newAuditShowCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show one audit entry by seq number or entry hash prefix (at least 4 hex digits)",
		Args:  evArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return exitCode(1, err)
			}
			rec, err := rt.AuditShow(args[0])
			if err != nil {
				if errors.Is(err, evidence.ErrBadAuditID) {
					return evUsage(err)
				}
				return exitCode(1, err)
			}
			if jsonOut {
				printAuditRecord(app.Stdout, rec, true)
				return nil
			}
			e := rec.Entry
			w := app.Stdout
			fmt.Fprintf(w, "seq:        %d\n", e.Seq)
			fmt.Fprintf(w, "hash:       %s\n", rec.Hash)
			fmt.Fprintf(w, "offset:     %d\n", rec.Offset)
			fmt.Fprintf(w, "time:       %s\n", e.Time)
			fmt.Fprintf(w, "kind:       %s\n", e.Kind)
			fmt.Fprintf(w, "subject:    %s\n", e.Subject)
			fmt.Fprintf(w, "prev:       %s\n", e.Prev)
			fmt.Fprintf(w, "signer:     %s\n", e.Signer)
			fmt.Fprintf(w, "key_sha256: %s\n", e.KeySHA256)
			fmt.Fprintf(w, "signature:  %s\n", e.Signature)
			fmt.Fprintf(w, "fields:\n")
			keys := make([]string, 0, len(e.Fields))
			for k := range e.Fields {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(w, "  %s: %s\n", k, formatAuditFields(map[string]any{"": e.Fields[k]}, false)[1:])
			}
			fmt.Fprintf(w, "(the signature is checked by `mvmctl audit verify`)\n")
			return nil
		},
	}
	evFlagErrors(cmd)
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the entry as JSON: {entry, hash, offset}")
	return cmd
}
