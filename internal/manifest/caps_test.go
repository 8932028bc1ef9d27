package manifest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestResourceBounds: cpus, memory and disk are accepted at their bounds
// and refused one step past them.
func TestResourceBounds(t *testing.T) {
	good := []string{
		"cpus = 1", "cpus = 16",
		`memory = "128M"`, `memory = "16G"`,
		`disk = "256M"`, `disk = "1T"`,
	}
	bad := []string{
		"cpus = 0", "cpus = 17",
		`memory = "127M"`, `memory = "16385M"`,
		`disk = "255M"`, `disk = "1025G"`,
	}
	for _, l := range good {
		if _, err := Parse("mvm.toml", []byte("template = \"python\"\n"+l+"\n")); err != nil {
			t.Errorf("%s refused: %v", l, err)
		}
	}
	for _, l := range bad {
		if _, err := Parse("mvm.toml", []byte("template = \"python\"\n"+l+"\n")); err == nil {
			t.Errorf("%s accepted", l)
		}
	}
}

// TestManifestSizeCap: a manifest larger than MaxManifestBytes is refused
// without being parsed.
func TestManifestSizeCap(t *testing.T) {
	dir := t.TempDir()
	big := "template = \"python\"\n" + strings.Repeat("# padding\n", MaxManifestBytes/10+1)
	if err := os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized manifest: %v", err)
	}
}
