package cli

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/spf13/cobra"
)

func init() { register(newFsCmd) }

// fsHints say what to do next after a file or process command failed, by
// kind and reason of the error (exit codes are in errors.go).
var fsHints = []struct {
	kind   errdefs.Kind
	reason string
	hint   string
}{
	{errdefs.KindNotFound, errdefs.ReasonPath, "check the path with `mvmctl fs ls NAME DIR`"},
	{errdefs.KindNotFound, errdefs.ReasonProcess, "see `mvmctl proc ls NAME`"},
	{errdefs.KindAlreadyExists, "", "remove it first or choose another path"},
	{errdefs.KindRefused, errdefs.ReasonUnsafe, "the copy was refused and the destination left as it was"},
	{errdefs.KindRefused, errdefs.ReasonSealed, "sealed images allow only fs read/ls/stat and cp out of the sandbox"},
	{errdefs.KindFailedPrecondition, errdefs.ReasonIsDir, "name a file, or use `mvmctl cp` for trees"},
	{errdefs.KindFailedPrecondition, errdefs.ReasonNotDir, "name a directory"},
	{errdefs.KindFailedPrecondition, errdefs.ReasonNotEmpty, "use `mvmctl fs rm -r` to remove a tree"},
	{errdefs.KindLimitExceeded, errdefs.ReasonTooLarge, "free space in the guest (the minimal image keeps files in RAM: give it more with `up --memory`), or raise --max-bytes"},
	{errdefs.KindFailedPrecondition, errdefs.ReasonNoStdin, "start the process with `mvmctl proc start --stdin`"},
	{errdefs.KindFailedPrecondition, errdefs.ReasonNotRunning, "start it with `mvmctl up`"},
}

// fsError maps an error of a file or process command to a message (what
// failed, why, what to do next) and the exit code of the one table.
func fsError(err error, what string) error {
	if err == nil {
		return nil
	}
	k, r := errdefs.KindOf(err), errdefs.ReasonOf(err)
	switch {
	case k == errdefs.KindNotFound && r == errdefs.ReasonSandbox:
		return err // the message names the sandbox; exit 3
	case k == errdefs.KindCanceled:
		return exitCode(ExitInterrupt, remessage(err, what+": interrupted"))
	}
	msg := err.Error()
	for _, h := range fsHints {
		if h.kind == k && (h.reason == "" || h.reason == r) {
			msg += " (" + h.hint + ")"
			break
		}
	}
	if k == errdefs.KindFailedPrecondition && r == errdefs.ReasonNotRunning {
		return exitCode(exitFor(err), remessage(err, msg))
	}
	return exitCode(exitFor(err), remessage(err, what+": "+msg))
}

// parseMode reads an octal mode such as 0755.
func parseMode(s string) (uint32, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o7777 {
		return 0, exitCode(ExitUsage, fmt.Errorf("--mode %q: expected an octal mode such as 0644 or 0755", s))
	}
	return uint32(m), nil
}

// safeName quotes guest-provided names that hold control characters, so a
// hostile guest cannot drive the caller's terminal.
func safeName(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

func modeString(fi runtime.FileInfo) string {
	m := fs.FileMode(fi.Mode & 0o777)
	if fi.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if fi.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if fi.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch fi.Type {
	case "dir":
		m |= fs.ModeDir
	case "symlink":
		m |= fs.ModeSymlink
	case "fifo":
		m |= fs.ModeNamedPipe
	case "socket":
		m |= fs.ModeSocket
	case "char":
		m |= fs.ModeDevice | fs.ModeCharDevice
	case "block":
		m |= fs.ModeDevice
	}
	return m.String()
}

func infoJSON(fi runtime.FileInfo) map[string]any {
	obj := map[string]any{
		"name": fi.Name, "path": fi.Path, "type": fi.Type, "mode": fmt.Sprintf("%04o", fi.Mode),
		"size": fi.Size, "mtime": fi.Mtime.UTC().Format(time.RFC3339Nano),
		"uid": fi.UID, "gid": fi.GID,
	}
	if fi.Type == "symlink" {
		obj["link_target"] = fi.LinkTarget
	}
	return obj
}

func fsCtx() (context.Context, func()) {
	ctx, _, stop := signalContext(context.Background())
	return ctx, stop
}

func newFsCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fs",
		Short: "Read and change files in a running sandbox",
		Long: `fs reads and changes files in a running sandbox. Guest paths are absolute.

Exit codes: 0 ok; 2 usage or invalid path; 3 no such sandbox; 4 no such
file; 5 permission denied; 6 exists; 7 not a directory / is a directory /
not empty; 8 too large or no space; 126 refused by a sealed image (which
allows read, ls and stat only); 125 mvm failed.`,
	}
	cmd.AddCommand(newFsReadCmd(app), newFsWriteCmd(app), newFsLsCmd(app), newFsStatCmd(app),
		newFsMkdirCmd(app), newFsRmCmd(app), newFsMvCmd(app))
	return cmd
}

func newFsReadCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:     "read NAME PATH",
		Short:   "Print a guest file to standard output (streamed)",
		Example: "  mvmctl fs read dev /etc/os-release\n  mvmctl fs read dev /work/out.bin > out.bin",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, stop := fsCtx()
			defer stop()
			_, err = rt.FsRead(ctx, args[0], args[1], app.Stdout)
			return fsError(err, "fs read "+args[1])
		},
	}
}

func newFsWriteCmd(app *App) *cobra.Command {
	var (
		content            string
		mode               string
		appendF, noClobber bool
		parents, jsonOut   bool
	)
	cmd := &cobra.Command{
		Use:   "write NAME PATH [--content TEXT]",
		Short: "Write standard input (or --content) to a guest file (streamed)",
		Example: `  echo hello | mvmctl fs write dev /work/hello.txt
  mvmctl fs write dev /work/run.sh --mode 0755 --content '#!/bin/sh
echo hi'
  mvmctl fs write dev /work/big.bin < big.bin`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o := runtime.FsWriteOptions{Append: appendF, NoReplace: noClobber, Parents: parents}
			if cmd.Flags().Changed("mode") {
				m, err := parseMode(mode)
				if err != nil {
					return err
				}
				o.Mode, o.HasMode = m, true
			}
			var in io.Reader = app.Stdin
			if cmd.Flags().Changed("content") {
				in = strings.NewReader(content)
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, stop := fsCtx()
			defer stop()
			resp, err := rt.FsWrite(ctx, args[0], args[1], in, o)
			if err != nil {
				return fsError(err, "fs write "+args[1])
			}
			if jsonOut {
				obj := infoJSON(resp.Info)
				obj["bytes_written"] = resp.Bytes
				return writeJSON(app.Stdout, obj)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&content, "content", "", "write this text instead of standard input")
	fl.StringVar(&mode, "mode", "0644", "permission bits, octal (applied exactly, also to an existing file)")
	fl.BoolVar(&appendF, "append", false, "append instead of replacing the contents")
	fl.BoolVarP(&noClobber, "no-clobber", "n", false, "fail (exit 6) if the file exists")
	fl.BoolVarP(&parents, "parents", "p", false, "create missing parent directories")
	fl.BoolVar(&jsonOut, "json", false, "print the written file as JSON")
	return cmd
}

func newFsLsCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "ls NAME PATH",
		Short: "List a guest directory",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, stop := fsCtx()
			defer stop()
			out, err := rt.FsList(ctx, args[0], args[1])
			if err != nil {
				return fsError(err, "fs ls "+args[1])
			}
			if jsonOut {
				ents := make([]map[string]any, 0, len(out.Entries))
				for _, e := range out.Entries {
					ents = append(ents, infoJSON(e))
				}
				return writeJSON(app.Stdout, map[string]any{"path": args[1], "entries": ents, "truncated": out.Truncated})
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 1, ' ', 0)
			for _, e := range out.Entries {
				name := safeName(e.Name)
				if e.Type == "symlink" {
					name += " -> " + safeName(e.LinkTarget)
				}
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", modeString(e), e.UID, e.GID, e.Size, name)
			}
			tw.Flush()
			if out.Truncated {
				fmt.Fprintf(app.Stderr, "mvmctl: listing truncated at %d entries\n", agentapi.MaxListEntries)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func newFsStatCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "stat NAME PATH",
		Short: "Describe a guest path (symlinks are not followed)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, stop := fsCtx()
			defer stop()
			fi, err := rt.FsStat(ctx, args[0], args[1])
			if err != nil {
				return fsError(err, "fs stat "+args[1])
			}
			if jsonOut {
				return writeJSON(app.Stdout, infoJSON(*fi))
			}
			fmt.Fprintf(app.Stdout, "path: %s\ntype: %s\nmode: %04o (%s)\nsize: %d\nowner: %d:%d\nmtime: %s\n",
				safeName(fi.Path), fi.Type, fi.Mode, modeString(*fi), fi.Size, fi.UID, fi.GID,
				fi.Mtime.Format(time.RFC3339))
			if fi.Type == "symlink" {
				fmt.Fprintf(app.Stdout, "target: %s\n", safeName(fi.LinkTarget))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func newFsMkdirCmd(app *App) *cobra.Command {
	var (
		parents bool
		mode    string
	)
	cmd := &cobra.Command{
		Use:   "mkdir NAME PATH",
		Short: "Create a guest directory",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := parseMode(mode)
			if err != nil {
				return err
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, stop := fsCtx()
			defer stop()
			_, err = rt.FsMkdir(ctx, args[0], args[1], m, parents)
			return fsError(err, "fs mkdir "+args[1])
		},
	}
	cmd.Flags().BoolVarP(&parents, "parents", "p", false, "create missing parents; no error if it exists")
	cmd.Flags().StringVar(&mode, "mode", "0755", "permission bits, octal (applied exactly)")
	return cmd
}

func newFsRmCmd(app *App) *cobra.Command {
	var recursive, force bool
	cmd := &cobra.Command{
		Use:   "rm NAME PATH",
		Short: "Remove a guest file, symlink or empty directory (-r: a tree)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, stop := fsCtx()
			defer stop()
			err = rt.FsRemove(ctx, args[0], args[1], recursive)
			if force && errdefs.IsNotFound(err) && errdefs.ReasonOf(err) == errdefs.ReasonPath {
				return nil
			}
			return fsError(err, "fs rm "+args[1])
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "remove a directory and its contents")
	cmd.Flags().BoolVarP(&force, "force", "f", false, "no error if the path does not exist")
	return cmd
}

func newFsMvCmd(app *App) *cobra.Command {
	var noClobber bool
	cmd := &cobra.Command{
		Use:   "mv NAME FROM TO",
		Short: "Move a guest path (into TO when TO is a directory)",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, stop := fsCtx()
			defer stop()
			_, err = rt.FsMove(ctx, args[0], args[1], args[2], noClobber)
			return fsError(err, "fs mv "+args[1])
		},
	}
	cmd.Flags().BoolVarP(&noClobber, "no-clobber", "n", false, "fail (exit 6) if the destination exists")
	return cmd
}
