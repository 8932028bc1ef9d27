package mcp

import (
	"strings"
	"testing"
	"time"
)

// TestFixedCaps: the caps docs/mcp.md calls fixed are refused one step
// past them, each with the cap in its message, before anything runs.
func TestFixedCaps(t *testing.T) {
	h := start(t, DefaultLimits(), nil)
	sb := h.mustOK("sandbox_create", map[string]any{"memory_mib": 256})["sandbox"].(string)
	h.mustFail("run_command", map[string]any{"sandbox": sb, "command": "true", "timeout": "10m1s"}, "at most 10m0s")
	h.mustFail("run_command", map[string]any{"sandbox": sb, "command": "cat", "stdin": strings.Repeat("x", MaxStdinBytes+1)}, "more than 1048576")
	h.mustFail("files_write", map[string]any{"sandbox": sb, "path": "/tmp/x", "content": strings.Repeat("x", MaxWriteBytes+1)}, "more than 8388608")
	h.mustFail("files_read", map[string]any{"sandbox": sb, "path": "/tmp/x", "max_bytes": MaxReadBytes + 1}, "between 1 and 8388608")
	h.mustFail("sandbox_create", map[string]any{"cpus": 3}, "cpus") // the harness's host has 2
	// defaults: no timeout given means 60 s, no max_bytes means 1 MiB
	if d, err := callTimeout(Duration(0)); err != nil || d != 60*time.Second {
		t.Errorf("default call timeout %v, %v", d, err)
	}
	if DefaultReadBytes != 1<<20 {
		t.Errorf("default files_read max_bytes %d", DefaultReadBytes)
	}
	if MaxCallTimeout.Minutes() != 10 || MaxStdinBytes != 1<<20 || MaxWriteBytes != 8<<20 || MaxReadBytes != 8<<20 || MaxCodeBytes != 100<<10 {
		t.Fatal("a fixed cap differs from docs/mcp.md and SPECIFICATION.md")
	}
}
