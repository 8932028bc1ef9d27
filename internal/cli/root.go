// Package cli implements the mvmctl command line. Each command lives in its
// own file and registers itself with register(); every command calls into
// internal/runtime (or the evidence and image packages) rather than
// re-implementing the model.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/spf13/cobra"
)

// Version is the mvmctl version, set at build time with -ldflags.
var Version = "0.1.0-dev"

// App is what every command needs: where state lives and where output goes.
type App struct {
	Dirs   paths.Dirs
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

var builders []func(*App) *cobra.Command

// register adds a top-level command; files call it from init().
func register(b func(*App) *cobra.Command) { builders = append(builders, b) }

// ExitError carries a process exit code out of a command. A command that
// has already printed its message sets Silent.
type ExitError struct {
	Code   int
	Err    error
	Silent bool
	// JSONDone: the command printed its own --json error object.
	JSONDone bool
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// exitCode wraps err so that mvmctl exits with code. A usage error (2)
// nobody classified is an invalid argument in the one error model, so that
// --json reports its kind.
func exitCode(code int, err error) error {
	if code == ExitUsage && err != nil && errdefs.KindOf(err) == errdefs.Unknown {
		err = errdefs.InvalidArgument(err)
	}
	return &ExitError{Code: code, Err: err}
}

// NewRoot builds the command tree.
func NewRoot(app *App) *cobra.Command {
	root := &cobra.Command{
		Use:           "mvmctl",
		Short:         "mvm: microVM sandboxes for untrusted code",
		Version:       Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(app.Stdin)
	root.SetOut(app.Stdout)
	root.SetErr(app.Stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return exitCode(ExitUsage, fmt.Errorf("%v (see `%s --help`)", err, cmd.CommandPath()))
	})
	for _, b := range builders {
		root.AddCommand(wrapArgs(b(app)))
	}
	refuseUnknown(root)
	return root
}

// refuseUnknown makes every command group (root included) refuse a word
// that is not one of its subcommands: a usage error (exit 2) that names
// the word, instead of printing help and exiting 0 (a script would believe
// `mvmctl image import x` worked) or cobra's plain error (exit 1). A group
// given alone still prints its help.
func refuseUnknown(cmd *cobra.Command) {
	if cmd.HasSubCommands() && !cmd.Runnable() {
		cmd.Args = func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
			if s := c.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf(" (did you mean %q?)", s[0])
			}
			return exitCode(ExitUsage, fmt.Errorf("%s; see `%s --help`", msg, c.CommandPath()))
		}
		cmd.RunE = func(c *cobra.Command, args []string) error { return c.Help() }
	}
	for _, c := range cmd.Commands() {
		refuseUnknown(c)
	}
}

// Main runs mvmctl with args and returns the process exit code.
func Main(args []string) int {
	app := &App{Dirs: paths.FromEnv(), Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	return run(app, args)
}

// run executes one command line and reports its error: the message (with a
// hint of what to do next) on stderr, with --json also an error object on
// stdout, and the exit code of the one table (errors.go).
func run(app *App, args []string) int {
	root := NewRoot(app)
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	code := exitFor(err)
	var ee *ExitError
	if errors.As(err, &ee) && (ee.Silent || ee.Err == nil) {
		return code
	}
	msg := withHint(err)
	fmt.Fprintf(app.Stderr, "mvmctl: %s\n", msg)
	if cmd != nil && wantsJSON(cmd) && (ee == nil || !ee.JSONDone) {
		obj := errorJSON(err, code)
		obj["message"] = msg
		writeJSON(app.Stdout, map[string]any{"schema_version": 1, "error": obj})
	}
	return code
}

// wantsJSON reports whether cmd was given --json.
func wantsJSON(cmd *cobra.Command) bool {
	f := cmd.Flags().Lookup("json")
	return f != nil && f.Value.String() == "true"
}

// wrapArgs makes argument-count errors of cmd and its children exit 2.
func wrapArgs(cmd *cobra.Command) *cobra.Command {
	if cmd.Args != nil {
		cmd.Args = usageArgs(cmd.Args)
	}
	for _, c := range cmd.Commands() {
		wrapArgs(c)
	}
	return cmd
}
