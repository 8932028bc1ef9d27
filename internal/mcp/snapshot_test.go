package mcp

import (
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// TestSnapshotsOffByDefault: without MVM_MCP_MAX_SNAPSHOTS a model saves
// nothing, and it cannot start a copy of a snapshot the operator did not
// name (nothing boots either way).
func TestSnapshotsOffByDefault(t *testing.T) {
	h := start(t, DefaultLimits(), nil)
	sb := h.mustOK("sandbox_create", map[string]any{"memory_mib": 256})["sandbox"].(string)
	h.mustFail("sandbox_snapshot", map[string]any{"sandbox": sb}, "MVM_MCP_MAX_SNAPSHOTS")
	if len(h.rt.snaps) != 0 {
		t.Fatalf("saved %v", h.rt.snaps)
	}
	h.rt.snaps["golden"] = runtime.SnapshotInfo{Tag: "golden", Meta: snapshot.Meta{Match: snapshot.Match{MemoryMiB: 256, CPUs: 1}}}
	ups := h.rt.ups
	h.mustFail("sandbox_create", map[string]any{"snapshot": "golden"}, "MVM_MCP_SNAPSHOTS")
	if h.rt.ups != ups {
		t.Fatal("a refused clone booted")
	}
}

// TestSnapshotCaps: saves are capped in count and bytes per server; a
// save whose size passes the byte cap afterwards is removed again; a
// copy of a saved snapshot boots from it; everything the server saved is
// removed when it stops.
func TestSnapshotCaps(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxSnapshots, lim.SnapshotMiB = 2, 1024
	h := start(t, lim, nil)
	sb := h.mustOK("sandbox_create", map[string]any{"memory_mib": 256})["sandbox"].(string)
	s1 := h.mustOK("sandbox_snapshot", map[string]any{"sandbox": sb})
	tag, _ := s1["snapshot"].(string)
	if !strings.HasPrefix(tag, sessionSnapshotPrefix) || s1["snapshots_saved"].(float64) != 1 || s1["bytes"].(float64) != 1<<20 {
		t.Fatalf("snapshot: %v", s1)
	}
	// A copy of it: the snapshot's memory is reserved, its plan reported.
	c := h.mustOK("sandbox_create", map[string]any{"snapshot": tag, "ttl": "5m"})
	opts := h.rt.live[c["sandbox_id"].(string)]
	if opts.FromSnapshot != tag || opts.Image != "" || opts.RunProfile != "" || !opts.Transient || c["memory_mib"].(float64) != 256 {
		t.Fatalf("clone: %v, up options %+v", c, opts)
	}
	for _, bad := range []map[string]any{
		{"snapshot": tag, "template": "python"}, {"snapshot": tag, "memory_mib": 512},
		{"snapshot": tag, "cpus": 2}, {"snapshot": tag, "allow": []string{"pypi.org"}},
	} {
		h.mustFail("sandbox_create", bad, "cannot be combined")
	}
	h.mustFail("sandbox_create", map[string]any{"snapshot": "mcp-notmine"}, "not one this server may start")

	// The byte cap, checked after the save: this one is 2 GiB on disk.
	h.rt.mu.Lock()
	h.rt.snapBytes = 2 << 30
	h.rt.mu.Unlock()
	h.mustFail("sandbox_snapshot", map[string]any{"sandbox": sb}, "it was removed")
	if len(h.rt.snaps) != 1 || len(h.rt.removed) != 1 {
		t.Fatalf("oversized snapshot kept: %v removed %v", h.rt.snaps, h.rt.removed)
	}
	// The byte cap, checked before the save from the guest's memory.
	big := h.mustOK("sandbox_create", map[string]any{"memory_mib": 1024})["sandbox"].(string)
	h.mustFail("sandbox_snapshot", map[string]any{"sandbox": big}, "MVM_MCP_SNAPSHOT_MIB")
	// The count cap.
	h.rt.mu.Lock()
	h.rt.snapBytes = 0
	h.rt.mu.Unlock()
	h.mustOK("sandbox_snapshot", map[string]any{"sandbox": sb})
	h.mustFail("sandbox_snapshot", map[string]any{"sandbox": sb}, "MVM_MCP_MAX_SNAPSHOTS=2")
	if len(h.rt.snaps) != 2 {
		t.Fatalf("snapshots %v", h.rt.snaps)
	}
	h.close()
	if len(h.rt.snaps) != 0 {
		t.Fatalf("snapshots left after the server stopped: %v", h.rt.snaps)
	}
}

// TestOperatorSnapshots: a tag the operator lists may be cloned; its
// memory counts against the ceiling before anything boots.
func TestOperatorSnapshots(t *testing.T) {
	lim := DefaultLimits()
	lim.Snapshots, lim.MemCeilingMiB = []string{"golden", "huge"}, 1024
	h := start(t, lim, nil)
	h.rt.snaps["golden"] = runtime.SnapshotInfo{Tag: "golden", Meta: snapshot.Meta{Match: snapshot.Match{MemoryMiB: 512, CPUs: 1}}}
	h.rt.snaps["huge"] = runtime.SnapshotInfo{Tag: "huge", Meta: snapshot.Meta{Match: snapshot.Match{MemoryMiB: 4096, CPUs: 1}}}
	c := h.mustOK("sandbox_create", map[string]any{"snapshot": "golden"})
	if c["memory_mib"].(float64) != 512 || c["template"] != "snapshot golden" {
		t.Fatalf("clone: %v", c)
	}
	ups := h.rt.ups
	h.mustFail("sandbox_create", map[string]any{"snapshot": "huge"}, "MVM_MCP_MEM_CEILING_MIB")
	h.mustFail("sandbox_create", map[string]any{"snapshot": "gone"}, "not one this server may start")
	if h.rt.ups != ups {
		t.Fatal("a refused clone booted")
	}
	h.close()
	if _, ok := h.rt.snaps["golden"]; !ok {
		t.Fatal("the server removed the operator's snapshot")
	}
}

func TestSnapshotLimitsFromEnv(t *testing.T) {
	env := map[string]string{EnvSnapshots: "golden, base-1.2 ,", EnvMaxSnapshots: "3", EnvSnapshotMiB: "2048"}
	l, err := LimitsFromEnv(func(k string) string { return env[k] })
	if err != nil || len(l.Snapshots) != 2 || l.Snapshots[1] != "base-1.2" || l.MaxSnapshots != 3 || l.SnapshotMiB != 2048 {
		t.Fatalf("%+v %v", l, err)
	}
	for k, v := range map[string]string{
		EnvSnapshots: "Bad/Tag", EnvMaxSnapshots: "65", EnvSnapshotMiB: "1",
	} {
		if _, err := LimitsFromEnv(func(x string) string {
			if x == k {
				return v
			}
			return ""
		}); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: %v", k, v, err)
		}
	}
	if _, err := LimitsFromEnv(func(x string) string {
		if x == EnvSnapshots {
			return "mcp-1234"
		}
		return ""
	}); err == nil {
		t.Error("an operator tag in the server's own namespace was accepted")
	}
}
