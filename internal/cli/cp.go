package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/spf13/cobra"
)

func init() { register(newCpCmd) }

// remoteSpec splits NAME:/path. A side without a colon before its first
// slash is a host path (write ./a:b for a host file with a colon).
func remoteSpec(s string) (name, p string, ok bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 || strings.Contains(s[:i], "/") {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

func newCpCmd(app *App) *cobra.Command {
	var (
		jsonOut  bool
		maxBytes int64
	)
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files and trees between the host and a sandbox (streamed)",
		Long: `cp copies a file or a directory tree; exactly one side is NAME:/abs/path.
Permissions, modification times and symlinks inside the tree are kept.
When DST is an existing directory, SRC lands inside it; otherwise SRC is
copied as DST. A symlink given as SRC is followed.

Copies out of a sandbox treat the guest's stream as hostile. It fills one
name only (DST/base(SRC), or DST), whatever the guest calls its members;
absolute names, "..", members reached through a symlink and sparse files
are refused (exit 9); symlinks are copied as symlinks, whatever their
target, and never followed; group/other write and setuid/setgid/sticky bits
are dropped; devices and hard links are skipped. The tree is assembled in a
staging directory and moved into place only when the whole stream was good:
a failed copy leaves DST as it was. Copies out stop at --max-bytes of file
data (default 4 GiB, exit 8).

Exit codes: as for ` + "`mvmctl fs`" + `, plus 9 for a refused unsafe member.`,
		Example: `  mvmctl cp ./project dev:/work
  mvmctl cp dev:/work/out ./out
  mvmctl cp big.iso dev:/tmp/big.iso`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			sn, sp, sRemote := remoteSpec(args[0])
			dn, dp, dRemote := remoteSpec(args[1])
			if sRemote == dRemote {
				return exitCode(ExitUsage, errors.New("exactly one of SRC and DST must be NAME:/abs/path"))
			}
			if maxBytes < 0 {
				return exitCode(ExitUsage, fmt.Errorf("--max-bytes %d: give a number of bytes, or 0 for no cap", maxBytes))
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			ctx, stop := fsCtx()
			defer stop()
			var obj map[string]any
			if dRemote {
				resp, err := rt.CopyIn(ctx, dn, args[0], dp)
				if err != nil {
					return fsError(err, fmt.Sprintf("cp %s %s", args[0], args[1]))
				}
				obj = map[string]any{"direction": "in", "sandbox": dn, "dest": resp.Root, "files": resp.Files,
					"dirs": resp.Dirs, "symlinks": resp.Symlinks, "bytes": resp.Bytes, "skipped": resp.Skipped}
			} else {
				limit := maxBytes
				if limit == 0 {
					limit = -1 // no cap, as asked
				}
				st, err := rt.CopyOut(ctx, sn, sp, args[1], limit)
				if err != nil {
					return fsError(err, fmt.Sprintf("cp %s %s", args[0], args[1]))
				}
				obj = map[string]any{"direction": "out", "sandbox": sn, "dest": st.Root, "files": st.Files,
					"dirs": st.Dirs, "symlinks": st.Symlinks, "bytes": st.Bytes, "skipped": st.Skipped}
			}
			if jsonOut {
				return writeJSON(app.Stdout, obj)
			}
			if s, _ := obj["skipped"].(int64); s > 0 {
				fmt.Fprintf(app.Stderr, "mvmctl: skipped %d members that are not files, directories or symlinks\n", s)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print what was copied as JSON")
	cmd.Flags().Int64Var(&maxBytes, "max-bytes", agentapi.DefaultCopyOutBytes, "copies out: fail (exit 8) past this many bytes of file data; 0 = no cap")
	return cmd
}
