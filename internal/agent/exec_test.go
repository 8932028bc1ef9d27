package agent

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
)

// TestExecStartedComesFirst: a process that writes at once must not get
// an output chunk onto the stream before the started message (the host
// treats that as a protocol error).
func TestExecStartedComesFirst(t *testing.T) {
	c, _ := testClient(t, "dev")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < 50; i++ {
		var out, errb bytes.Buffer
		res, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo hi; echo err >&2; exit 3"}, Stdout: &out, Stderr: &errb})
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		if res.ExitCode != 3 || out.String() != "hi\n" || errb.String() != "err\n" {
			t.Fatalf("run %d: exit %d stdout %q stderr %q", i, res.ExitCode, out.String(), errb.String())
		}
	}
}

// TestConsoleRefusedUnlessAdmitted is issue 11 item 11 in the agent: a
// terminal session is refused unless the host admitted console access at
// boot (mvm.console=1), whatever the image profile.
func TestConsoleRefusedUnlessAdmitted(t *testing.T) {
	if p := parseCmdline("quiet mvm.hostname=x mvm.console=1"); !p.console {
		t.Fatal("mvm.console=1 not parsed")
	}
	for _, cl := range []string{"quiet", "mvm.console=0", "mvm.console=yes", "mvm.console"} {
		if parseCmdline(cl).console {
			t.Fatalf("%q allows a console", cl)
		}
	}
	c, s := testClient(t, "dev")
	s.console = false
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	_, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo hi"}, TTY: true, Stdout: &out})
	if err == nil || !agentapi.IsRefused(err) || !strings.Contains(err.Error(), "console") {
		t.Fatalf("tty exec without console: %v", err)
	}
	// Exec without a terminal is not a console and still runs.
	res, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo hi"}, Stdout: &out})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("plain exec: %v", err)
	}
	s.console = true
	out.Reset()
	res, err = c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo hi"}, TTY: true, Stdout: &out})
	if err != nil || res.ExitCode != 0 || !strings.Contains(out.String(), "hi") {
		t.Fatalf("tty exec with console: %v %q", err, out.String())
	}
}
