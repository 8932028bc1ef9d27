package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// exitRule maps an error kind (and, where the kind alone does not say
// enough, its reason) to mvmctl's exit code.
type exitRule struct {
	Kind    errdefs.Kind
	Reason  string // "" matches any reason
	Code    int
	Meaning string
}

// exitRules is the one table from the error model to exit codes; the first
// rule that matches wins. docs/cli.md lists it (TestExitTableDocumented
// keeps the two in step). Codes a command sets itself (the guest command's
// own exit code, 128+N for a signal) are not errors and are not here.
var exitRules = []exitRule{
	{errdefs.KindInvalidArgument, "", ExitUsage, "bad flags, arguments, manifest, template or package name"},
	{errdefs.KindNotFound, errdefs.ReasonSandbox, ExitNotFound, "no such sandbox"},
	{errdefs.KindNotFound, snapshot.ReasonSnapshot, ExitNotFound, "no such snapshot"},
	{errdefs.KindNotFound, errdefs.ReasonCommand, ExitNoCommand, "the command does not exist in the guest"},
	{errdefs.KindNotFound, "", ExitPathNotFound, "no such file, directory or process handle"},
	{errdefs.KindPermissionDenied, errdefs.ReasonCommand, ExitCannotExec, "the command is not executable"},
	{errdefs.KindPermissionDenied, "", ExitPermission, "permission denied in the guest"},
	{errdefs.KindAlreadyExists, errdefs.ReasonSandbox, 1, "a sandbox of that name exists"},
	{errdefs.KindAlreadyExists, "", ExitExists, "the destination exists"},
	{errdefs.KindFailedPrecondition, errdefs.ReasonNotDir, ExitWrongType, "not a directory"},
	{errdefs.KindFailedPrecondition, errdefs.ReasonIsDir, ExitWrongType, "is a directory"},
	{errdefs.KindFailedPrecondition, errdefs.ReasonNotEmpty, ExitWrongType, "directory not empty"},
	{errdefs.KindFailedPrecondition, errdefs.ReasonNotRunning, ExitMvm, "the sandbox is not running"},
	{errdefs.KindFailedPrecondition, "", 1, "the current state does not allow it (e.g. no open stdin)"},
	{errdefs.KindLimitExceeded, "", ExitTooLarge, "too large, no space left, or a cap was hit"},
	{errdefs.KindRefused, errdefs.ReasonUnsafe, ExitUnsafe, "an unsafe archive member or symlink was refused"},
	{errdefs.KindRefused, snapshot.ReasonIntegrity, ExitCannotExec, "a snapshot or paused state failed verification (tampered or truncated): not restored"},
	{errdefs.KindRefused, "", ExitCannotExec, "refused by the image profile (sealed) or by policy (profile, admission)"},
	{errdefs.KindTimeout, errdefs.ReasonCommand, ExitTimeout, "`--timeout` passed; the command was killed"},
	{errdefs.KindTimeout, errdefs.ReasonNotReady, ExitNotReady, "`wait`: the sandbox did not become ready in time"},
	{errdefs.KindTimeout, "", ExitMvm, "mvm did not get an answer in time (boot, supervisor)"},
	{errdefs.KindGuest, errdefs.ReasonFailed, ExitFailed, "`wait`: the sandbox failed"},
	{errdefs.KindGuest, "", ExitMvm, "the guest failed (boot, agent)"},
	{errdefs.KindTransport, "", ExitMvm, "the channel to the sandbox failed"},
	{errdefs.KindUnavailable, "", ExitMvm, "a prerequisite is missing (accelerator, VMM, kernel, guest agent)"},
	{errdefs.KindBusy, "", 1, "something else holds the resource; retry"},
	{errdefs.KindCanceled, "", ExitInterrupt, "interrupted"},
	{errdefs.Unknown, "", 1, "the operation failed (see the message)"},
}

// exitFor is the exit code of err: an ExitError's own code, else the
// table's.
func exitFor(err error) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	k, r := errdefs.KindOf(err), errdefs.ReasonOf(err)
	for _, rule := range exitRules {
		if rule.Kind == k && (rule.Reason == "" || rule.Reason == r) {
			return rule.Code
		}
	}
	return 1
}

// errorJSON is the error object of --json output: the kind and reason of
// the one error model, the message, and the exit code.
func errorJSON(err error, code int) map[string]any {
	obj := map[string]any{
		"kind":      errdefs.KindOf(err).String(),
		"message":   err.Error(),
		"exit_code": code,
	}
	if r := errdefs.ReasonOf(err); r != "" {
		obj["reason"] = r
	}
	return obj
}

// hints say what to do next, for errors whose message (written for every
// surface, MCP included) cannot name mvmctl commands or flags.
var hints = []struct {
	kind   errdefs.Kind
	reason string
	hint   string
}{
	{errdefs.KindNotFound, errdefs.ReasonSandbox, "`mvmctl ls -a` lists sandboxes"},
	{errdefs.KindAlreadyExists, errdefs.ReasonSandbox, "choose another --name, or `mvmctl down` that sandbox first"},
	{errdefs.KindNotFound, snapshot.ReasonSnapshot, "`mvmctl snapshot ls` lists snapshots"},
	{errdefs.KindRefused, snapshot.ReasonIntegrity, "`mvmctl snapshot rm TAG` removes it; `mvmctl snapshot save` makes a new one"},
}

// withHint is err's message with the hint for its kind, if any and if the
// message does not carry one already.
func withHint(err error) string {
	msg := err.Error()
	k, r := errdefs.KindOf(err), errdefs.ReasonOf(err)
	for _, h := range hints {
		if h.kind == k && (h.reason == "" || h.reason == r) {
			if !strings.Contains(msg, h.hint) {
				msg += " (" + h.hint + ")"
			}
			break
		}
	}
	return msg
}

// bootExit is the exit code of a failed up or run boot: an error nobody
// classified is mvm's own failure (125), as the table says of boot and
// transport.
func bootExit(err error) int {
	if errdefs.KindOf(err) == errdefs.Unknown {
		return ExitMvm
	}
	return exitFor(err)
}

// remessage is err with a new message and the same kind and reason.
func remessage(err error, msg string) error {
	k, r := errdefs.KindOf(err), errdefs.ReasonOf(err)
	if k == errdefs.Unknown {
		return errors.New(msg)
	}
	return errdefs.WithReason(k, r, errors.New(msg))
}

// exitTableMarkdown renders exitRules as the table of docs/cli.md.
func exitTableMarkdown() string {
	var b strings.Builder
	b.WriteString("| code | kind | reason | meaning |\n|---|---|---|---|\n")
	for _, r := range exitRules {
		reason := "any"
		if r.Reason != "" {
			reason = "`" + r.Reason + "`"
		}
		fmt.Fprintf(&b, "| %d | `%s` | %s | %s |\n", r.Code, r.Kind, reason, r.Meaning)
	}
	return b.String()
}
