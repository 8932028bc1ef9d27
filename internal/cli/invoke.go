package cli

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/spf13/cobra"
)

func init() { register(newInvokeCmd) }

// Exit codes of invoke.
const (
	exitInvokeRaised = 1 // the function raised: the error is structured on stdout (--json) or stderr
)

func newInvokeCmd(app *App) *cobra.Command {
	var (
		input   string
		jsonOut bool
		timeout time.Duration
		receipt string
	)
	cmd := &cobra.Command{
		Use:   "invoke NAME|FILE [--input JSON|-] [--json] [--timeout D]",
		Short: "Call a declared workload's function in its sandbox with JSON arguments",
		Long: `Invoke calls the function entrypoint of a sandbox booted from a declaration
(mvmctl up FILE) and prints its JSON result. NAME is the sandbox; FILE is a
declaration or IR whose name is the sandbox's name.

--input is one JSON value (- reads it from stdin): an array is the
positional arguments, an object the keyword arguments (the last argument in
JavaScript), anything else the single argument. Input and output are capped
at 16 MiB.

Exit codes: 0 result printed; 1 the function raised (type, message and the
guest traceback are printed; with --json, {"ok": false, "error": {...}} on
stdout); otherwise the table of docs/cli.md: 2 usage or bad input JSON,
3 no such sandbox, 8 input or result over 16 MiB, 124 timeout, 125
transport or runtime failure (including a worker that crashed during the
call).`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if runtime.IsWorkloadFile(name) {
				wl, err := loadWorkload(cmd.Context(), name)
				if err != nil {
					return err
				}
				name = wl.IR.Name
			}
			var in []byte
			switch input {
			case "":
			case "-":
				b, err := io.ReadAll(io.LimitReader(app.Stdin, runtime.MaxInvokeBytes+1))
				if err != nil {
					return exitCode(ExitUsage, err)
				}
				in = b
			default:
				in = []byte(input)
			}
			if len(in) > runtime.MaxInvokeBytes {
				return exitCode(ExitTooLarge, fmt.Errorf("%w: input is more than %d bytes", runtime.ErrInvokeTooLarge, runtime.MaxInvokeBytes))
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, _, stop := signalContext(cmd.Context())
			defer stop()
			res, err := rt.Invoke(ctx, name, runtime.InvokeOptions{Input: in, Timeout: timeout})
			if err != nil {
				code := bootExit(err)
				if jsonOut {
					writeJSON(app.Stdout, map[string]any{"ok": false, "transport_error": err.Error()})
					return &ExitError{Code: code, Err: err, Silent: false}
				}
				return exitCode(code, err)
			}
			if receipt != "" {
				if len(res.Receipt) == 0 {
					return exitCode(ExitUsage, errors.New("--receipt: a warm call has no receipt of its own (its audit entry carries the IR hash); cold calls do"))
				}
				if err := writeReceipt(receipt, res.Receipt); err != nil {
					return exitCode(1, err)
				}
			}
			if jsonOut {
				if err := writeJSON(app.Stdout, res); err != nil {
					return err
				}
			} else if res.OK {
				fmt.Fprintf(app.Stdout, "%s\n", res.Result)
			} else {
				fmt.Fprintf(app.Stderr, "%s", res.Error.Traceback)
				fmt.Fprintf(app.Stderr, "%s: %s\n", res.Error.Type, res.Error.Message)
			}
			if !res.OK {
				return &ExitError{Code: exitInvokeRaised, Err: res.Error, Silent: true}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&input, "input", "i", "", "arguments as one JSON value, or - for stdin")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print {ok, result|error, warm, workload_ir_sha256}")
	cmd.Flags().StringVar(&receipt, "receipt", "", "write the signed receipt of the call (cold calls) to this file")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (e.g. 30s); 0 = no limit")
	return cmd
}

// buildWorkloadRun builds a declaration or IR (mvmctl build FILE).
func buildWorkloadRun(cmd *cobra.Command, app *App, path string, refresh, jsonOut bool) error {
	wl, err := loadWorkload(cmd.Context(), path)
	if err != nil {
		return err
	}
	rt, err := app.runtime()
	if err != nil {
		return err
	}
	a, err := rt.BuildWorkload(cmd.Context(), wl, image.BuildOptions{Refresh: refresh}, buildProgress(app, jsonOut))
	if err != nil {
		code := exitFor(err)
		if jsonOut {
			writeJSON(app.Stdout, map[string]any{"error": err.Error(), "workload_ir_sha256": wl.Hash})
		}
		return exitCode(code, err)
	}
	if jsonOut {
		return writeJSON(app.Stdout, map[string]any{"artifact": a, "workload_ir_sha256": wl.Hash})
	}
	printRepinned(app, a.Repinned)
	fmt.Fprintf(app.Stdout, "%s  %s  workload %s (ir %s)\n", a.Digest, a.Template, wl.IR.Name, wl.Hash)
	return nil
}
