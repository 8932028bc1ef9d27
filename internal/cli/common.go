package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/manifest"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// Exit codes of mvmctl beyond the guest's own. Errors get theirs from one
// table, exitRules (errors.go).
const (
	ExitUsage        = 2   // bad flags or arguments
	ExitNotFound     = 3   // no such sandbox
	ExitPathNotFound = 4   // no such file, directory or process handle
	ExitPermission   = 5   // permission denied
	ExitExists       = 6   // the destination exists
	ExitWrongType    = 7   // not a directory, is a directory, not empty
	ExitTooLarge     = 8   // too large, no space left, or a cap was hit
	ExitUnsafe       = 9   // an unsafe archive member or symlink was refused
	ExitFailed       = 65  // wait: the sandbox failed
	ExitNotReady     = 75  // wait: not ready in time
	ExitMvm          = 125 // mvm could not run the command (boot, transport)
	ExitCannotExec   = 126 // the command exists but may not run
	ExitNoCommand    = 127 // the command does not exist in the guest
	ExitTimeout      = 124 // --timeout passed; the command was killed
	ExitInterrupt    = 130 // SIGINT
	ExitTerminated   = 143 // SIGTERM
)

// auditHook is where supervisor lifecycle events go; evidence wiring sets it.
var auditHook = func(*App) func(string, *sandbox.State, map[string]any) { return nil }

func (app *App) runtime() (*runtime.Runtime, error) {
	return runtime.New(app.Dirs)
}

// signalContext is cancelled by SIGINT or SIGTERM; sig tells which.
func signalContext(parent context.Context) (ctx context.Context, sig func() os.Signal, stop func()) {
	ctx, cancel := context.WithCancel(parent)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	var got os.Signal
	done := make(chan struct{})
	go func() {
		select {
		case got = <-ch:
			cancel()
		case <-done:
		}
	}()
	return ctx, func() os.Signal {
			select {
			case <-ctx.Done():
			default:
				return nil
			}
			return got
		}, func() {
			signal.Stop(ch)
			close(done)
			cancel()
		}
}

func signalExit(sig os.Signal) int {
	if sig == syscall.SIGTERM {
		return ExitTerminated
	}
	return ExitInterrupt
}

// parseEnv turns K=V flags into a map.
func parseEnv(kvs []string) (map[string]string, error) {
	env := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			// -e NAME passes the caller's value, as docker does.
			val, present := os.LookupEnv(kv)
			if !present {
				return nil, exitCode(ExitUsage, fmt.Errorf("-e %s: expected KEY=VALUE (or the name of a variable set here)", kv))
			}
			k, v = kv, val
		}
		env[k] = v
	}
	return env, nil
}

// parseSize accepts 512M, 1G or a number of MiB, for the flag named flag.
func parseSize(flag, s string) (int, error) {
	mib, err := manifest.ParseSize(s)
	if err != nil {
		return 0, exitCode(ExitUsage, fmt.Errorf("--%s %q: %v", flag, s, err))
	}
	return int(mib), nil
}

func isTerminal(f any) bool {
	if file, ok := f.(*os.File); ok {
		return term.IsTerminal(int(file.Fd()))
	}
	return false
}

// capture keeps up to limit bytes of a stream and counts the rest.
type capture struct {
	buf   []byte
	limit int
	total int64
}

func (c *capture) Write(p []byte) (int, error) {
	c.total += int64(len(p))
	if room := c.limit - len(c.buf); room > 0 {
		if len(p) < room {
			room = len(p)
		}
		c.buf = append(c.buf, p[:room]...)
	}
	return len(p), nil
}

func (c *capture) truncated() bool { return c.total > int64(len(c.buf)) }

// streamJSON puts captured output into a result object: text when it is
// UTF-8, base64 otherwise.
func (c *capture) into(obj map[string]any, name string) {
	if utf8.Valid(c.buf) {
		obj[name] = string(c.buf)
	} else {
		obj[name+"_base64"] = base64.StdEncoding.EncodeToString(c.buf)
	}
	obj[name+"_bytes"] = c.total
	obj[name+"_truncated"] = c.truncated()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// commandError maps an error of run, exec or console (the command could not
// run) to its message and exit code. Exit 1 belongs to the guest command
// there, so an error the table would give 1 exits 125 instead.
func commandError(err error, argv0 string) error {
	k, r := errdefs.KindOf(err), errdefs.ReasonOf(err)
	code := exitFor(err)
	if code == 1 {
		code = ExitMvm
	}
	switch {
	case k == errdefs.KindNotFound && r == errdefs.ReasonCommand:
		return exitCode(code, errdefs.WithReason(k, r, fmt.Errorf("%s: command not found in the sandbox", argv0)))
	case k == errdefs.KindPermissionDenied && r == errdefs.ReasonCommand:
		return exitCode(code, errdefs.WithReason(k, r, fmt.Errorf("%s: permission denied in the sandbox", argv0)))
	}
	return exitCode(code, err)
}

func ms(d time.Duration) int64 { return d.Milliseconds() }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// usageArgs wraps a cobra argument check so that its failure exits 2.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return exitCode(ExitUsage, fmt.Errorf("%v (see `%s --help`)", err, cmd.CommandPath()))
		}
		return nil
	}
}

// maxLogLine caps one NDJSON log line; a longer one is split (a hostile
// guest can write a console line without end).
const maxLogLine = 64 << 10

// ndjsonLines turns a byte stream into NDJSON, one {"line": TEXT} object
// per line (without its newline; invalid UTF-8 becomes U+FFFD). Flush
// writes a last line that had no newline.
type ndjsonLines struct {
	w   io.Writer
	buf []byte
}

func (n *ndjsonLines) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			n.buf = append(n.buf, p...)
			for len(n.buf) >= maxLogLine {
				if err := n.emit(n.buf[:maxLogLine]); err != nil {
					return 0, err
				}
				n.buf = append(n.buf[:0], n.buf[maxLogLine:]...)
			}
			break
		}
		n.buf = append(n.buf, p[:i]...)
		p = p[i+1:]
		line := n.buf
		for len(line) > maxLogLine {
			if err := n.emit(line[:maxLogLine]); err != nil {
				return 0, err
			}
			line = line[maxLogLine:]
		}
		if err := n.emit(line); err != nil {
			return 0, err
		}
		n.buf = n.buf[:0]
	}
	return total, nil
}

func (n *ndjsonLines) emit(line []byte) error {
	return writeJSON(n.w, map[string]string{"line": strings.ToValidUTF8(string(bytes.TrimSuffix(line, []byte("\r"))), "\uFFFD")})
}

// Flush writes what is left of an unterminated last line.
func (n *ndjsonLines) Flush() error {
	if len(n.buf) == 0 {
		return nil
	}
	err := n.emit(n.buf)
	n.buf = n.buf[:0]
	return err
}
