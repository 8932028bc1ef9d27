package runtime

import (
	"testing"
	"time"
)

// TestBootTimeoutDefaultAndOverride: boots have a 90 s deadline unless
// MVM_BOOT_TIMEOUT (a Go duration or whole seconds) says otherwise; a bad
// value keeps the default.
func TestBootTimeoutDefaultAndOverride(t *testing.T) {
	for v, want := range map[string]time.Duration{
		"": 90 * time.Second, "300s": 300 * time.Second, "2m": 2 * time.Minute, "45": 45 * time.Second,
		"0": 90 * time.Second, "-5s": 90 * time.Second, "soon": 90 * time.Second,
	} {
		t.Setenv("MVM_BOOT_TIMEOUT", v)
		if got := BootTimeout(); got != want {
			t.Errorf("MVM_BOOT_TIMEOUT=%q: %v, want %v", v, got, want)
		}
	}
}
