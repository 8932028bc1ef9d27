package agent

import (
	"bytes"
	"context"
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
