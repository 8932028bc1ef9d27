package ir

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"
)

// TestIRCaps: the document and resource caps of docs/workload-ir.md hold
// at their bounds and refuse one step past them.
func TestIRCaps(t *testing.T) {
	res := func(cpu, mem int) string {
		return mutate(t, good, func(m map[string]any) {
			m["resources"] = map[string]any{"cpu_cores": cpu, "memory_mb": mem}
		})
	}
	for _, doc := range []string{res(1, MinMemoryMB), res(MaxCPUCores, MaxMemoryMB)} {
		if _, err := Decode([]byte(doc)); err != nil {
			t.Errorf("at the bounds, refused: %v", err)
		}
	}
	for _, doc := range []string{res(MaxCPUCores+1, 512), res(1, MinMemoryMB-1), res(1, MaxMemoryMB+1)} {
		if _, err := Decode([]byte(doc)); !slices.Contains(codes(err), EResources) {
			t.Errorf("past a bound: %v", err)
		}
	}
	disk := func(mb int) string {
		return mutate(t, good, func(m map[string]any) { m["resources"] = map[string]any{"disk_mb": mb} })
	}
	if _, err := Decode([]byte(disk(MaxDiskMB))); err != nil {
		t.Errorf("disk at its bound: %v", err)
	}
	if _, err := Decode([]byte(disk(MaxDiskMB + 1))); !slices.Contains(codes(err), EResources) {
		t.Errorf("disk past its bound: %v", err)
	}
	file := func(n int) string {
		return mutate(t, good, func(m map[string]any) {
			m["files"] = []any{map[string]any{"path": "/opt/f", "content_base64": base64.StdEncoding.EncodeToString(make([]byte, n)), "mode": 0o644}}
		})
	}
	if _, err := Decode([]byte(file(MaxFileBytes))); err != nil {
		t.Errorf("a %d-byte file refused: %v", MaxFileBytes, err)
	}
	if _, err := Decode([]byte(file(MaxFileBytes + 1))); !slices.Contains(codes(err), EFile) {
		t.Errorf("a file over %d bytes: %v", MaxFileBytes, err)
	}
	big := good[:len(good)-1] + `,"x":"` + strings.Repeat("a", MaxBytes) + `"}`
	if _, err := Decode([]byte(big)); !slices.Contains(codes(err), EDecode) || !strings.Contains(err.Error(), "more than") {
		t.Errorf("over %d bytes: %v", MaxBytes, err)
	}
	if MaxCPUCores != 16 || MaxMemoryMB != 16384 || MaxBytes != 16<<20 || MaxFileBytes != 4<<20 {
		t.Error("a cap differs from docs/workload-ir.md and SPECIFICATION.md")
	}
}
