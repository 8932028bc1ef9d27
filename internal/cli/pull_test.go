package cli

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/paths"
)

// TestMCPImageResolverRegistries: an OCI reference that is not pulled is
// refused through MCP unless the operator allows registries.
func TestMCPImageResolverRegistries(t *testing.T) {
	base := t.TempDir()
	d := paths.Dirs{Cache: filepath.Join(base, "cache"), Data: filepath.Join(base, "data"), State: filepath.Join(base, "state")}
	resolve := mcpImageResolver(d)
	t.Setenv(EnvMCPAllowRegistries, "")
	for _, ref := range []string{"python:3.12-slim", "ghcr.io/org/app@sha256:" + strings.Repeat("ab", 32)} {
		if _, err := resolve(ref); err == nil || !strings.Contains(err.Error(), EnvMCPAllowRegistries) {
			t.Fatalf("%s without registries: %v", ref, err)
		}
	}
	t.Setenv(EnvMCPAllowRegistries, "1")
	if _, err := resolve("python:3.12-slim"); err != nil {
		t.Fatalf("with registries allowed: %v", err)
	}
}
