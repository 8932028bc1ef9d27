package rootfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestResolveInRoot(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755)
	os.Symlink("usr/bin", filepath.Join(root, "bin"))
	os.Symlink(outside, filepath.Join(root, "evil"))      // absolute, points out
	os.Symlink("../../..", filepath.Join(root, "usr/up")) // relative, climbs out
	cases := map[string]string{
		"/bin/x":          filepath.Join(root, "usr/bin/x"),
		"/evil/x":         filepath.Join(root, outside, "x"),
		"/usr/up/etc/x":   filepath.Join(root, "etc/x"),
		"/a/b":            filepath.Join(root, "a/b"),
		"/../../etc/pass": filepath.Join(root, "etc/pass"),
	}
	for in, want := range cases {
		got, err := ResolveInRoot(root, in)
		if err != nil || got != want {
			t.Errorf("ResolveInRoot(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	// copying into a symlinked directory lands inside the tree
	src := t.TempDir()
	writeTree(t, src, map[string]string{"f": "1"})
	if _, _, err := CopyIn(root, filepath.Join(src, "f"), "/evil/f", nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(outside, "f")); err == nil {
		t.Fatal("file written outside the tree")
	}
	if _, err := os.Stat(filepath.Join(root, outside, "f")); err != nil {
		t.Fatal(err)
	}
}

func TestSafeRemoveAllRefusesMounts(t *testing.T) {
	if err := SafeRemoveAll("/"); err == nil {
		t.Fatal("removed /")
	}
	// /proc is a mount point (and nothing in it can be deleted anyway)
	if err := SafeRemoveAll("/proc"); err == nil || !strings.Contains(err.Error(), "mounted") {
		t.Fatalf("removal of a mount point allowed: %v", err)
	}
}
