package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestExitTableDocumented keeps docs/cli.md's table and exitRules equal.
func TestExitTableDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), exitTableMarkdown()) {
		t.Fatalf("docs/cli.md does not hold the exit-code table; replace it with:\n%s", exitTableMarkdown())
	}
}

// TestEveryKindHasAnExitCode: no kind falls through to the default.
func TestEveryKindHasAnExitCode(t *testing.T) {
	for _, k := range append([]errdefs.Kind{errdefs.Unknown}, errdefs.Kinds...) {
		found := false
		for _, r := range exitRules {
			if r.Kind == k && r.Reason == "" {
				found = true
			}
		}
		if !found {
			t.Errorf("kind %v has no catch-all row", k)
		}
	}
}

func fsErr(kind agentapi.FsKind) error {
	return &agentapi.FsError{Kind: kind, Path: "/x"}
}

// wire sends err through a gRPC status and back, as the agent client sees it.
func wire(err error) error { return errdefs.FromGRPC(errdefs.ToGRPC(err)) }

func TestExitFor(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want int
	}{
		{"no sandbox", fmt.Errorf("%w: no sandbox named \"x\"", runtime.ErrNotFound), ExitNotFound},
		{"not running", fmt.Errorf("%w: x is stopped", runtime.ErrNotRunning), ExitMvm},
		{"policy", fmt.Errorf("%w: profile", runtime.ErrPolicy), ExitCannotExec},
		{"command timeout", fmt.Errorf("%w after 1s", runtime.ErrTimeout), ExitTimeout},
		{"boot", fmt.Errorf("%w: x: qemu died", runtime.ErrBoot), ExitMvm},
		{"name taken", fmt.Errorf("sandbox %q: %w", "dev", sandbox.ErrNameTaken), 1},
		{"bad options", (&runtime.UpOptions{CPUs: 100}).Validate(), ExitUsage},
		{"path not found", wire(fsErr(agentapi.FsNotFound)), ExitPathNotFound},
		{"permission", wire(fsErr(agentapi.FsPermission)), ExitPermission},
		{"exists", wire(fsErr(agentapi.FsExists)), ExitExists},
		{"not dir", wire(fsErr(agentapi.FsNotDir)), ExitWrongType},
		{"is dir", wire(fsErr(agentapi.FsIsDir)), ExitWrongType},
		{"not empty", wire(fsErr(agentapi.FsNotEmpty)), ExitWrongType},
		{"too large", wire(fsErr(agentapi.FsTooLarge)), ExitTooLarge},
		{"invalid path", wire(fsErr(agentapi.FsInvalidPath)), ExitUsage},
		{"unsafe", wire(fsErr(agentapi.FsUnsafe)), ExitUnsafe},
		{"sealed", wire(agentapi.RefusedSealed("/x")), ExitCannotExec},
		{"local unsafe (host extractor)", fsErr(agentapi.FsUnsafe), ExitUnsafe},
		{"no stdin", wire(errdefs.WithReason(errdefs.KindFailedPrecondition, errdefs.ReasonNoStdin, errors.New("no open stdin"))), 1},
		{"process not found", wire(errdefs.WithReason(errdefs.KindNotFound, errdefs.ReasonProcess, errors.New("no process"))), ExitPathNotFound},
		{"command not found", wire(errdefs.WithReason(errdefs.KindNotFound, errdefs.ReasonCommand, errors.New("ls"))), ExitNoCommand},
		{"not executable", wire(errdefs.WithReason(errdefs.KindPermissionDenied, errdefs.ReasonCommand, errors.New("ls"))), ExitCannotExec},
		{"transport (no details)", errdefs.FromGRPC(status.Error(codes.Unavailable, "connection reset")), ExitMvm},
		{"proc cap", wire(errdefs.Errorf(errdefs.KindLimitExceeded, "too many")), ExitTooLarge},
		{"interrupted", fmt.Errorf("read: %w", context.Canceled), ExitInterrupt},
		{"plain", errors.New("something"), 1},
		{"explicit", exitCode(42, errdefs.NotFound(errors.New("x"))), 42},
	}
	for _, c := range cases {
		if got := exitFor(c.err); got != c.want {
			t.Errorf("%s: exit %d, want %d (%v: %v/%q)", c.name, got, c.want, c.err, errdefs.KindOf(c.err), errdefs.ReasonOf(c.err))
		}
	}
}

// TestCommandErrorNeverExitsOne: for run and exec, exit 1 is the guest
// command's; mvm's own failures exit 125 there.
func TestCommandErrorNeverExitsOne(t *testing.T) {
	for _, err := range []error{errors.New("plain"), errdefs.Busy(errors.New("b")),
		wire(errdefs.Errorf(errdefs.KindFailedPrecondition, "this image declares no command"))} {
		if got := exitFor(commandError(err, "ls")); got != ExitMvm {
			t.Errorf("%v: exit %d, want %d", err, got, ExitMvm)
		}
	}
	err := commandError(wire(errdefs.WithReason(errdefs.KindNotFound, errdefs.ReasonCommand, errors.New("nope: command not found"))), "nope")
	if exitFor(err) != ExitNoCommand || err.Error() != "nope: command not found in the sandbox" || errdefs.ReasonOf(err) != errdefs.ReasonCommand {
		t.Errorf("command not found: %d %q", exitFor(err), err)
	}
}

func TestFsErrorMessages(t *testing.T) {
	err := fsError(wire(fsErr(agentapi.FsNotFound)), "fs read /x")
	if exitFor(err) != ExitPathNotFound || !strings.Contains(err.Error(), "fs read /x: ") || !strings.Contains(err.Error(), "mvmctl fs ls") {
		t.Errorf("not found: %d %q", exitFor(err), err)
	}
	if errdefs.KindOf(err) != errdefs.KindNotFound {
		t.Errorf("the kind is lost: %v", errdefs.KindOf(err))
	}
	err = fsError(wire(errdefs.WithReason(errdefs.KindFailedPrecondition, errdefs.ReasonNoStdin, errors.New("process p1 has no open stdin"))), "proc stdin p1")
	if exitFor(err) != 1 || !strings.Contains(err.Error(), "--stdin") {
		t.Errorf("no stdin: %d %q", exitFor(err), err)
	}
	err = fsError(fmt.Errorf("%w: x is stopped", runtime.ErrNotRunning), "fs ls /")
	if exitFor(err) != ExitMvm || !strings.Contains(err.Error(), "mvmctl up") {
		t.Errorf("not running: %d %q", exitFor(err), err)
	}
	nf := fmt.Errorf("%w: no sandbox named %q", runtime.ErrNotFound, "x")
	if err := fsError(nf, "fs ls /"); exitFor(err) != ExitNotFound {
		t.Errorf("no sandbox: %d", exitFor(err))
	}
	if fsError(nil, "x") != nil {
		t.Error("nil became an error")
	}
}

// testApp is an App on temporary state directories with captured output.
func testApp(t *testing.T) (*App, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	d := t.TempDir()
	var out, errb bytes.Buffer
	return &App{
		Dirs:   paths.Dirs{Data: d + "/data", Cache: d + "/cache", State: d + "/state"},
		Stdin:  strings.NewReader(""),
		Stdout: &out, Stderr: &errb,
	}, &out, &errb
}

// TestJSONErrorObject: with --json, a failure prints the error object of
// the one model on stdout, and the message with its hint on stderr.
func TestJSONErrorObject(t *testing.T) {
	app, out, errb := testApp(t)
	code := run(app, []string{"boot-report", "nosuch", "--json"})
	if code != ExitNotFound {
		t.Fatalf("exit %d, want %d; stderr %q", code, ExitNotFound, errb)
	}
	var obj struct {
		SchemaVersion int `json:"schema_version"`
		Error         struct {
			Kind, Reason, Message string
			ExitCode              int `json:"exit_code"`
		}
	}
	if err := json.Unmarshal(out.Bytes(), &obj); err != nil {
		t.Fatalf("stdout is not one JSON object: %v: %q", err, out)
	}
	if obj.SchemaVersion != 1 || obj.Error.Kind != "not_found" || obj.Error.Reason != "sandbox" || obj.Error.ExitCode != ExitNotFound ||
		!strings.Contains(obj.Error.Message, `"nosuch"`) {
		t.Errorf("error object %+v", obj)
	}
	if !strings.HasPrefix(errb.String(), "mvmctl: ") || !strings.Contains(errb.String(), "mvmctl ls -a") {
		t.Errorf("stderr %q", errb)
	}
	// Without --json, stdout stays empty.
	app, out, _ = testApp(t)
	if code := run(app, []string{"boot-report", "nosuch"}); code != ExitNotFound || out.Len() != 0 {
		t.Errorf("exit %d, stdout %q", code, out)
	}
}

// TestExecJSONErrorObject: exec --json prints its own object (with the
// sandbox and exit code) once, not a second generic one.
func TestExecJSONErrorObject(t *testing.T) {
	app, out, errb := testApp(t)
	code := run(app, []string{"exec", "nosuch", "--json", "--", "true"})
	if code != ExitNotFound {
		t.Fatalf("exit %d; stderr %q", code, errb)
	}
	dec := json.NewDecoder(bytes.NewReader(out.Bytes()))
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		t.Fatal(err)
	}
	if dec.More() {
		t.Fatalf("more than one object: %q", out)
	}
	e, _ := obj["error"].(map[string]any)
	if obj["sandbox"] != "nosuch" || obj["exit_code"] != float64(ExitNotFound) || e["kind"] != "not_found" || e["reason"] != "sandbox" {
		t.Errorf("object %v", obj)
	}
}

// TestUsageErrorKindInJSON: a usage error under --json reports the
// invalid_argument kind, not unknown.
func TestUsageErrorKindInJSON(t *testing.T) {
	for _, args := range [][]string{{"ls", "--json", "extra"}, {"down", "--json"}, {"ls", "--json", "--bogus"}} {
		app, out, _ := testApp(t)
		if code := run(app, args); code != ExitUsage || !strings.Contains(out.String(), `"kind":"invalid_argument"`) {
			t.Errorf("%v: exit %d, stdout %q", args, code, out)
		}
	}
}
