package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// agentDirect dials a sandbox's agent socket the way the runtime does,
// but skips every host-side check: what it gets is the agent's answer.
func (e *env) agentDirect(name string) *agentapi.Client {
	e.t.Helper()
	link, err := os.Readlink(filepath.Join(e.state, "names", name))
	if err != nil {
		e.t.Fatal(err)
	}
	dir := filepath.Join(e.state, "sb", filepath.Base(link))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := agentapi.Dial(ctx, func(ctx context.Context) (net.Conn, error) {
		return sandbox.DialIn(ctx, dir, sandbox.AgentSocket)
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) upJSON(args ...string) map[string]any {
	e.t.Helper()
	r := e.must(append([]string{"up", "--json"}, args...)...)
	var obj map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &obj); err != nil {
		e.t.Fatalf("up --json: %v: %s", err, r)
	}
	return obj
}

// TestConsoleRefusedUnderRestrictive is issue 11 item 11: a restrictive
// (or standard) sandbox on a development image refuses a console, in
// mvmctl (from the admitted plan) and in the guest agent (told at boot);
// a dev sandbox allows it. It also checks issue 17's naming: `up --json`
// says run_profile and image_profile apart, and records the backend.
func TestConsoleRefusedUnderRestrictive(t *testing.T) {
	e := newEnv(t)
	defer func() {
		e.run("down", "--all")
		e.assertClean()
	}()
	obj := e.upJSON("--name", "locked", "--profile", "restrictive")
	if obj["run_profile"] != "restrictive" || obj["image_profile"] != "dev" || obj["backend"] != "qemu" {
		t.Errorf("up --json: %v", obj)
	}
	if _, ok := obj["profile"]; ok {
		t.Errorf("up --json still has the ambiguous \"profile\": %v", obj)
	}
	for _, args := range [][]string{
		{"console", "locked", "--command", "echo opened"},
		{"exec", "-t", "locked", "--", "echo", "opened"},
	} {
		r := e.run(args...)
		if r.code != 126 || strings.Contains(r.stdout, "opened") || !strings.Contains(r.stderr, "run profile") {
			t.Errorf("mvmctl %v under restrictive: %s", args, r)
		}
	}
	// Past mvmctl, the agent refuses a terminal too.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	_, err := e.agentDirect("locked").Exec(ctx, agentapi.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo opened"}, TTY: true, Stdout: &out})
	if err == nil || !agentapi.IsRefused(err) || !strings.Contains(err.Error(), "console") || strings.Contains(out.String(), "opened") {
		t.Errorf("agent tty exec under restrictive: %v %q", err, out.String())
	}
	// Plain exec is not a console.
	if r := e.must("exec", "locked", "--", "echo", "fine"); r.stdout != "fine\n" {
		t.Errorf("exec: %s", r)
	}

	obj = e.upJSON("--name", "open", "--profile", "dev")
	if obj["run_profile"] != "dev" || obj["image_profile"] != "dev" {
		t.Errorf("up --json: %v", obj)
	}
	if r := e.must("console", "open", "--command", "echo opened"); r.stdout != "opened\n" {
		t.Errorf("console under dev: %s", r)
	}
	out.Reset()
	res, err := e.agentDirect("open").Exec(ctx, agentapi.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo opened"}, TTY: true, Stdout: &out})
	if err != nil || res.ExitCode != 0 || !strings.Contains(out.String(), "opened") {
		t.Errorf("agent tty exec under dev: %v %q", err, out.String())
	}
}
