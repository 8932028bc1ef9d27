package mcp

import (
	"errors"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
)

// TestToolErrorsByKind: tool errors are chosen by the error's kind and
// reason, in one place; each is a sentence for a model that names no CLI
// flag.
func TestToolErrorsByKind(t *testing.T) {
	kinded := func(k errdefs.Kind, r, msg string) error {
		return errdefs.WithReason(k, r, errors.New(msg))
	}
	boot := op{boot: true, template: "python"}
	run := op{prog: "python3"}
	read := op{file: "read", path: "/work/a"}
	for _, c := range []struct {
		name string
		o    op
		err  error
		want string
	}{
		{"sealed refusal", run, kinded(errdefs.KindRefused, errdefs.ReasonSealed, "exec is not allowed"), "refused by the sandbox's image"},
		{"policy refusal", run, kinded(errdefs.KindRefused, errdefs.ReasonPolicy, "console"), "refused: console"},
		{"missing command", run, kinded(errdefs.KindNotFound, errdefs.ReasonCommand, "python3"), "python3: command not found in the sandbox"},
		{"missing sandbox", run, kinded(errdefs.KindNotFound, errdefs.ReasonSandbox, `no sandbox named "x"`), "no longer exists"},
		{"not running", read, kinded(errdefs.KindFailedPrecondition, errdefs.ReasonNotRunning, "mcp-1 is stopped"), "the sandbox is not running"},
		{"permission", run, kinded(errdefs.KindPermissionDenied, "", "EACCES"), "python3: permission denied"},
		{"missing file", read, kinded(errdefs.KindNotFound, errdefs.ReasonPath, "no such file or directory"), "read /work/a: no such file"},
		{"file too large", read, kinded(errdefs.KindLimitExceeded, errdefs.ReasonTooLarge, "too large"), "too large: /work/a"},
		{"transport", run, kinded(errdefs.KindTransport, "", "EOF"), "lost the connection to the sandbox"},
		{"guest", run, kinded(errdefs.KindGuest, errdefs.ReasonFailed, "VMM died"), "the sandbox failed"},
		{"cancelled run", run, kinded(errdefs.KindCanceled, "", "interrupted"), "the command was killed"},
		{"cancelled boot", boot, kinded(errdefs.KindCanceled, "", "interrupted"), "nothing was left running"},
		{"boot refused", boot, kinded(errdefs.KindRefused, errdefs.ReasonPolicy, "admission"), "refused: admission"},
		{"boot unavailable", boot, kinded(errdefs.KindUnavailable, "", "no kernel"), "the operator of the mvm server must fix it"},
		{"boot timeout", boot, kinded(errdefs.KindTimeout, errdefs.ReasonNotReady, "90s"), "did not become ready"},
		{"boot failed", boot, kinded(errdefs.KindGuest, errdefs.ReasonFailed, "VMM exited"), "could not start a sandbox (template python)"},
		// The text is not the kind: "sealed" in the message of an
		// unclassified error is not a refusal.
		{"text is not a kind", run, errors.New("sealed envelope"), "could not run the command: sealed envelope"},
	} {
		got := toolError(c.o, c.err)
		if got == nil || !strings.Contains(got.Error(), c.want) {
			t.Errorf("%s: %v, want it to contain %q", c.name, got, c.want)
		}
	}
	for _, k := range errdefs.Kinds {
		for _, o := range []op{boot, run, read, {handle: "mcp-1"}} {
			got := toolError(o, errdefs.New(k, errors.New("why")))
			if got == nil || got.Error() == "" || strings.Contains(got.Error(), "--") {
				t.Errorf("kind %s, op %+v: %v", k, o, got)
			}
		}
	}
}
