package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/mvm-sandbox/mvm/internal/atomicfile"
	"github.com/mvm-sandbox/mvm/internal/decl"
	"github.com/mvm-sandbox/mvm/internal/ir"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/spf13/cobra"
)

func init() {
	register(newCompileCmd)
	register(newApproveCmd)
	register(newApprovalsCmd)
}

// Exit code of compile, approve, build and up for a declaration or IR that
// does not compile or validate.
const exitDeclaration = 2

// declErrorJSON is the --json form of a compile failure.
func declErrorJSON(err error) map[string]any {
	out := map[string]any{"ok": false, "error": err.Error()}
	var de *decl.Error
	var il ir.Errors
	var ie *ir.Error
	switch {
	case errors.As(err, &de):
		out["errors"] = []any{de}
	case errors.As(err, &il):
		out["errors"] = il
	case errors.As(err, &ie):
		out["errors"] = []any{ie}
	}
	return out
}

func isDeclError(err error) bool {
	var de *decl.Error
	var ie *ir.Error
	return errors.As(err, &de) || errors.As(err, &ie)
}

func newCompileCmd(app *App) *cobra.Command {
	var out string
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "compile FILE|DIR [--out IR.json] [--json]",
		Short: "Compile an @mvm.app declaration (or an SDK recording) into Workload IR, without running it",
		Long: `Compile reads a declaration statically with a parser: the module is never
imported or executed. FILE is a .py file with @mvm.app(...), a .ts/.js file
with export const NAME = mvm.app({...})(fn), or a recording written by
MVM_SDK_MODE=record; DIR is searched (top level) for the one declaring file.

The IR is printed (or written to --out, with source.path made relative to
the output's directory) with its hash: sha256 of its RFC 8785 form.
Errors name file:line:col, a stable code and what is allowed instead.
See docs/declarations.md and docs/workload-ir.md.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := decl.Compile(cmd.Context(), args[0])
			if err != nil {
				if jsonOut {
					writeJSON(app.Stdout, declErrorJSON(err))
					return &ExitError{Code: exitDeclaration, Err: err, Silent: true}
				}
				return exitCode(exitDeclaration, err)
			}
			w := res.Workload
			if out != "" {
				// source.path is relative to the IR file's directory
				absOut, err := filepath.Abs(out)
				if err != nil {
					return exitCode(ExitUsage, err)
				}
				absSrc, err := filepath.Abs(filepath.Join(res.BaseDir, w.Source.Path))
				if err != nil {
					return exitCode(ExitUsage, err)
				}
				rel, err := filepath.Rel(filepath.Dir(absOut), absSrc)
				if err != nil {
					return exitCode(ExitUsage, err)
				}
				w.Source.Path = filepath.ToSlash(rel)
			}
			data, err := w.Marshal()
			if err != nil {
				return err
			}
			hash, err := w.Hash()
			if err != nil {
				return err
			}
			if out != "" {
				if err := atomicfile.WriteFile(out, data, 0o644); err != nil {
					return exitCode(1, err)
				}
			}
			switch {
			case jsonOut:
				return writeJSON(app.Stdout, map[string]any{"ok": true, "ir_sha256": hash, "file": res.File, "kind": res.Kind, "out": out, "ir": json.RawMessage(data)})
			case out != "":
				fmt.Fprintf(app.Stdout, "%s  %s -> %s\n", hash, res.File, out)
			default:
				app.Stdout.Write(data)
				fmt.Fprintf(app.Stderr, "ir sha256 %s\n", hash)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "out", "o", "", "write the IR to this file")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print {ok, ir_sha256, ir} (or {ok: false, errors})")
	return cmd
}

// loadWorkload loads FILE for approve/build/up/invoke with the CLI's
// exit codes.
func loadWorkload(ctx context.Context, path string) (*runtime.Workload, error) {
	wl, err := runtime.LoadWorkload(ctx, path)
	if err != nil {
		if isDeclError(err) {
			return nil, exitCode(exitDeclaration, err)
		}
		return nil, exitCode(ExitUsage, err)
	}
	return wl, nil
}

func newApproveCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "approve IR.json|FILE",
		Short: "Record a reviewed workload's IR hash as approved (signed with the host key)",
		Long: `Approve records the hash of the workload in IR.json (or of the declaration
FILE, compiled statically) as approved, signed with the host key, under the
data directory. Under the restrictive profile, and whenever
MVM_REQUIRE_APPROVED=1, only approved workloads boot. Any change to the
declaration changes the hash and needs a new approval.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			wl, err := loadWorkload(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			a, err := rt.Approve(wl)
			if err != nil {
				return exitCode(1, err)
			}
			if jsonOut {
				return writeJSON(app.Stdout, a)
			}
			fmt.Fprintf(app.Stdout, "approved %s  %s  (signed by %s)\n", a.Payload.IRSHA256, a.Payload.Name, a.Payload.SignerID)
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the signed approval")
	return cmd
}

func newApprovalsCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "approvals [--json]",
		Short: "List approved workload hashes (each signature verified)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			l, err := rt.Approvals()
			if err != nil {
				return exitCode(1, err)
			}
			if jsonOut {
				return writeJSON(app.Stdout, l)
			}
			for _, e := range l {
				state := "valid"
				if !e.Valid {
					state = "INVALID: " + e.Error
				}
				fmt.Fprintf(app.Stdout, "%s  %-20s  %s  %s\n", e.Payload.IRSHA256, e.Payload.Name, e.Payload.ApprovedAt, state)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print a JSON array")
	return cmd
}
