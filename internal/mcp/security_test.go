package mcp

import (
	"context"
	"reflect"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// Regression tests for the MCP findings of the security review (issue
// 11): each demonstrated the attack on the code before its fix.

func (f *fakeRuntime) upCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ups
}

// TestMCPRefusesHostLoopback: an allowlist naming host.mvm.internal would
// give the model the host's loopback (Docker, Jupyter, Ollama on
// 127.0.0.1). It is refused before anything boots, however it is spelled.
func TestMCPRefusesHostLoopback(t *testing.T) {
	h := start(t, DefaultLimits(), nil)
	for _, a := range []string{"host.mvm.internal:2375", "HOST.MVM.INTERNAL.", "host.mvm.internal"} {
		h.mustFail("sandbox_create", map[string]any{"allow": []string{"example.com", a}}, "host.mvm.internal")
	}
	if n := h.rt.upCount(); n != 0 {
		t.Fatalf("%d boots were dispatched for a refused allowlist", n)
	}
	// What MCP does pass carries its origin, so that the runtime's own
	// policy refuses the host's loopback and private answers too.
	h.mustOK("sandbox_create", map[string]any{"allow": []string{"example.com"}})
	h.mustOK("sandbox_create", nil)
	h.rt.mu.Lock()
	defer h.rt.mu.Unlock()
	for _, o := range h.rt.upOpts {
		if o.Network.Origin != netpolicy.OriginMCP {
			t.Fatalf("Up without the MCP origin: %+v", o.Network)
		}
	}
}

// TestMCPTotalCap: MVM_MCP_MEM_CEILING_MIB bounds one sandbox; a client
// looping sandbox_create is stopped by the session's caps on live
// sandboxes and their total memory, before anything boots. Transient runs
// count while they run.
func TestMCPTotalCap(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxSandboxes, lim.TotalMemMiB = 2, 1024
	h := start(t, lim, nil)
	a := h.mustOK("sandbox_create", map[string]any{"memory_mib": 512})["sandbox"]
	b := h.mustOK("sandbox_create", map[string]any{"memory_mib": 256})["sandbox"]
	h.mustFail("sandbox_create", map[string]any{"memory_mib": 128}, "MVM_MCP_MAX_SANDBOXES=2")
	h.mustFail("run_command", map[string]any{"command": "true"}, "MVM_MCP_MAX_SANDBOXES=2")
	h.mustFail("run_code", map[string]any{"language": "shell", "code": "true"}, "sandbox_destroy")
	if n := h.rt.upCount(); n != 2 {
		t.Fatalf("%d boots dispatched, want 2: refusals must come first", n)
	}
	h.mustOK("sandbox_destroy", map[string]any{"sandbox": b})
	h.mustFail("sandbox_create", map[string]any{"memory_mib": 768}, "MVM_MCP_TOTAL_MEM_MIB=1024")
	h.mustFail("run_command", map[string]any{"command": "true", "memory_mib": 640}, "MVM_MCP_TOTAL_MEM_MIB")
	if n := h.rt.upCount(); n != 2 {
		t.Fatalf("%d boots dispatched, want 2", n)
	}
	h.mustOK("sandbox_create", map[string]any{"memory_mib": 512}) // exactly the total
	l := h.mustOK("sandbox_list", nil)
	lims := l["limits"].(map[string]any)
	if lims["max_sandboxes"] != 2.0 || lims["total_mem_mib"] != 1024.0 || l["mem_in_use_mib"] != 1024.0 {
		t.Fatalf("sandbox_list does not report the caps and their use: %v", l)
	}
	h.mustOK("sandbox_destroy", map[string]any{"sandbox": a})
	// A freed slot is free again, for a transient run too.
	if r := h.mustOK("run_command", map[string]any{"argv": []string{"echo", "x"}}); r["transient"] != true {
		t.Fatalf("transient run after a destroy: %v", r)
	}
}

// TestMCPCapCountsBootingSandboxes: sandboxes still booting hold their
// place, so concurrent calls cannot all pass the check and then boot.
func TestMCPCapCountsBootingSandboxes(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxSandboxes = 1
	h := start(t, lim, nil)
	first := make(chan *sdk.CallToolResult, 1)
	go func() {
		res, _ := h.cs.CallTool(context.Background(), &sdk.CallToolParams{Name: "sandbox_create", Arguments: map[string]any{"template": "slow"}})
		first <- res
	}()
	testenv.Eventually(t, 5*time.Second, 20*time.Millisecond, func() bool { return h.rt.upCount() == 1 }, testenv.Msg("the first sandbox to be booting"))
	h.mustFail("sandbox_create", nil, "MVM_MCP_MAX_SANDBOXES=1")
	h.mustFail("run_command", map[string]any{"command": "true"}, "MVM_MCP_MAX_SANDBOXES=1")
	close(h.rt.gate)
	if res := <-first; res == nil || res.IsError {
		t.Fatalf("the booting sandbox failed: %v", res)
	}
	if n := h.rt.upCount(); n != 1 {
		t.Fatalf("%d boots dispatched, want 1", n)
	}
}

// TestMCPReportsAdmittedNetwork: a sandbox created with an allowlist runs
// under the standard profile with egress; the result used to say
// network none, profile restrictive. It reports what was admitted.
func TestMCPReportsAdmittedNetwork(t *testing.T) {
	h := start(t, DefaultLimits(), nil)
	c := h.mustOK("sandbox_create", map[string]any{"allow": []string{"example.com", "api.example.org:8443"}})
	want := []any{"example.com:443", "api.example.org:8443"}
	if c["network"] != "allowlist" || c["run_profile"] != "standard" || !reflect.DeepEqual(c["allow"], want) {
		t.Fatalf("create with allow reports network=%v run_profile=%v allow=%v", c["network"], c["run_profile"], c["allow"])
	}
	plain := h.mustOK("sandbox_create", nil)
	if plain["network"] != "none" || plain["run_profile"] != "restrictive" || plain["allow"] != nil || plain["image_profile"] != "dev" {
		t.Fatalf("create without allow: %v", plain)
	}
	for _, s := range h.mustOK("sandbox_list", nil)["sandboxes"].([]any) {
		m := s.(map[string]any)
		if m["sandbox"] == c["sandbox"] && (m["network"] != "allowlist" || m["run_profile"] != "standard") {
			t.Fatalf("sandbox_list: %v", m)
		}
	}
}

// TestMCPRefusesHostDirectoryTemplate: template "agent" built the
// directory ./agent of the server's working directory. Only templates
// and built images are accepted, and the runtime is told never to read a
// name as a directory (a directory named like a template would otherwise
// win).
func TestMCPRefusesHostDirectoryTemplate(t *testing.T) {
	h := start(t, DefaultLimits(), nil)
	for _, tmpl := range []string{"agent", "./agent", "../agent", "/etc", "~/src", "python/..", "."} {
		h.mustFail("sandbox_create", map[string]any{"template": tmpl}, "not a template")
		h.mustFail("run_command", map[string]any{"command": "true", "template": tmpl}, "not a template")
	}
	if n := h.rt.upCount(); n != 0 {
		t.Fatalf("%d boots dispatched for refused templates", n)
	}
	h.mustOK("sandbox_create", map[string]any{"template": "python"})
	h.mustOK("run_code", map[string]any{"language": "node", "code": "1"})
	h.rt.mu.Lock()
	defer h.rt.mu.Unlock()
	for _, o := range h.rt.upOpts {
		if !o.NoBuildDir {
			t.Fatalf("Up of %q may read a host directory: %+v", o.Image, o)
		}
	}
}
