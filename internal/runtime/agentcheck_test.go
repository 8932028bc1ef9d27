package runtime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// TestCheckAgentRefusesDynamicAgent: the agent runs as the guest's /init,
// where no shared libraries exist; a dynamically linked one is refused
// before anything boots, with what to do next.
func TestCheckAgentRefusesDynamicAgent(t *testing.T) {
	testenv.NeedStaticBinary(t, "/bin/busybox", "busybox-static")
	if err := (&Runtime{Agent: "/bin/busybox"}).CheckAgent(); err != nil {
		t.Fatalf("static executable refused: %v", err)
	}
	err := (&Runtime{Agent: "/bin/ls"}).CheckAgent() // dynamically linked on Debian
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("dynamic agent: %v", err)
	}
	script := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	if err := (&Runtime{Agent: script}).CheckAgent(); err == nil || !strings.Contains(err.Error(), "not a Linux executable") {
		t.Fatalf("script agent: %v", err)
	}
	if err := (&Runtime{Agent: filepath.Join(t.TempDir(), "none")}).CheckAgent(); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("missing agent: %v", err)
	}
}
