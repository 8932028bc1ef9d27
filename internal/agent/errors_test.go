package agent

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
)

// TestErrorKindsReachTheHost drives the real agent server through the
// host's client and checks that each failure arrives with its kind and
// reason from the status details. Before the one error model, every
// FailedPrecondition (no open stdin, not a directory, not empty) read as a
// policy refusal: agentapi.IsRefused was true for all of them (seen failing
// on the old code).
func TestErrorKindsReachTheHost(t *testing.T) {
	c, _ := testClient(t, "dev")
	ctx := context.Background()
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	os.WriteFile(file, []byte("x"), 0o644)
	os.MkdirAll(filepath.Join(dir, "full", "sub"), 0o755)

	check := func(what string, err error, kind errdefs.Kind, reason string) {
		t.Helper()
		if errdefs.KindOf(err) != kind || errdefs.ReasonOf(err) != reason {
			t.Errorf("%s: got %v/%q (%v), want %v/%q", what, errdefs.KindOf(err), errdefs.ReasonOf(err), err, kind, reason)
		}
		if kind != errdefs.KindRefused && agentapi.IsRefused(err) {
			t.Errorf("%s: reads as a policy refusal: %v", what, err)
		}
		if err != nil && strings.HasPrefix(err.Error(), "rpc error:") {
			t.Errorf("%s: message keeps the gRPC prefix: %q", what, err.Error())
		}
	}

	_, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"no-such-command-xyz"}})
	check("exec missing command", err, errdefs.KindNotFound, errdefs.ReasonCommand)
	_, err = c.Exec(ctx, agentapi.ExecRequest{Argv: []string{file}})
	check("exec non-executable", err, errdefs.KindPermissionDenied, errdefs.ReasonCommand)
	_, err = c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"true", "a\x00b"}})
	check("exec NUL in argv", err, errdefs.KindInvalidArgument, "")

	cat := start(t, c, false, "cat")
	_, err = c.ProcStdin(ctx, cat.Handle, strings.NewReader("x"), false)
	check("stdin of a process without one", err, errdefs.KindFailedPrecondition, errdefs.ReasonNoStdin)
	c.Agent.ProcSignal(ctx, &pb.ProcSignalRequest{Handle: cat.Handle, Signal: 9})
	_, err = c.Agent.ProcSignal(ctx, &pb.ProcSignalRequest{Handle: "nope", Signal: 15})
	check("unknown process", err, errdefs.KindNotFound, errdefs.ReasonProcess)

	_, err = c.Agent.ListDir(ctx, &pb.ListDirRequest{Path: file})
	check("ls of a file", err, errdefs.KindFailedPrecondition, errdefs.ReasonNotDir)
	_, err = c.Agent.Remove(ctx, &pb.RemoveRequest{Path: filepath.Join(dir, "full")})
	check("rm of a non-empty dir", err, errdefs.KindFailedPrecondition, errdefs.ReasonNotEmpty)
	_, _, err = c.ReadFile(ctx, filepath.Join(dir, "missing"), io.Discard)
	check("read of a missing file", err, errdefs.KindNotFound, errdefs.ReasonPath)
	_, _, err = c.ReadFile(ctx, "relative", io.Discard)
	check("relative path", err, errdefs.KindInvalidArgument, errdefs.ReasonPath)
	_, err = c.Agent.MakeDir(ctx, &pb.MakeDirRequest{Path: file})
	check("mkdir over a file", err, errdefs.KindAlreadyExists, "")
}

// TestSealedRefusalIsAPolicyRefusal: the sealed profile's refusals are
// refusals, with the sealed reason.
func TestSealedRefusalIsAPolicyRefusal(t *testing.T) {
	c, _ := testClient(t, "sealed")
	ctx := context.Background()
	_, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"true"}})
	if !errdefs.IsRefused(err) || errdefs.ReasonOf(err) != errdefs.ReasonSealed {
		t.Errorf("exec on sealed: %v/%q", errdefs.KindOf(err), errdefs.ReasonOf(err))
	}
	_, err = c.Agent.MakeDir(ctx, &pb.MakeDirRequest{Path: filepath.Join(t.TempDir(), "d")})
	if !errdefs.IsRefused(err) || errdefs.ReasonOf(err) != errdefs.ReasonSealed {
		t.Errorf("mkdir on sealed: %v/%q", errdefs.KindOf(err), errdefs.ReasonOf(err))
	}
}
