package workload

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/ir"
)

func wl() *ir.Workload {
	w := &ir.Workload{Name: "worker", Language: "python", Image: ir.Image{Kind: ir.ImagePython, Version: "3.13"},
		Entrypoints: []ir.Entrypoint{{Kind: ir.EntryFunction, Module: "app", Function: "run"}}}
	w.Normalize()
	return w
}

func code(err error) string {
	var e *ir.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func TestPrepareSource(t *testing.T) {
	base := t.TempDir()
	for _, f := range []string{"app.py", "lib/util.py", "tests/test_x.py", "data.bin", ".git/HEAD"} {
		os.MkdirAll(filepath.Join(base, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(base, f), []byte(f), 0o644)
	}
	os.Symlink("lib/util.py", filepath.Join(base, "inside-link.py"))
	w := wl()
	w.Source.Include = []string{"**/*.py"}
	w.Source.Exclude = []string{"tests/**"}
	st, err := Prepare(w, base, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Remove()
	for _, want := range []string{"src/app.py", "src/lib/util.py", "src/inside-link.py", "runner/runner.py", "mvm-sdk/index.js"} {
		if _, err := os.Lstat(filepath.Join(st.Dir, want)); err != nil {
			t.Errorf("missing %s", want)
		}
	}
	for _, not := range []string{"src/tests/test_x.py", "src/data.bin", "src/.git/HEAD"} {
		if _, err := os.Lstat(filepath.Join(st.Dir, not)); err == nil {
			t.Errorf("%s copied", not)
		}
	}
	if st.Manifest.Template != "python-3.13" || st.Manifest.Workdir != "/app" || st.Manifest.Profile != "dev" {
		t.Errorf("manifest %+v", st.Manifest)
	}
}

func TestPrepareRefusals(t *testing.T) {
	base := t.TempDir()
	os.WriteFile(filepath.Join(base, "app.py"), nil, 0o644)
	// a symlink leaving the tree
	os.Symlink("/etc/passwd", filepath.Join(base, "passwd"))
	tmp := t.TempDir()
	if _, err := Prepare(wl(), base, tmp, nil); code(err) != ir.ESourceSymlink {
		t.Fatalf("symlink out: %v", err)
	}
	os.Remove(filepath.Join(base, "passwd"))
	os.Symlink("../../x", filepath.Join(base, "up"))
	if _, err := Prepare(wl(), base, tmp, nil); code(err) != ir.ESourceSymlink {
		t.Fatalf("relative symlink out: %v", err)
	}
	os.Remove(filepath.Join(base, "up"))
	// nothing half-created is left behind
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Fatalf("staging left behind: %v", ents)
	}
	// the source root itself leaving the declaration directory via a symlink
	os.Symlink(t.TempDir(), filepath.Join(base, "elsewhere"))
	w := wl()
	w.Source.Path = "elsewhere"
	if _, err := Prepare(w, base, tmp, nil); code(err) != ir.ESourceOutOfTree {
		t.Fatalf("root out: %v", err)
	}
	// python312 fails at build with the versions that exist
	w = wl()
	w.Image = ir.Image{Kind: ir.ImageNixPackages, Packages: []string{"python312"}}
	_, err := Prepare(w, base, tmp, nil)
	if code(err) != ir.EImageUnavailable || !strings.Contains(err.Error(), "python313") || !strings.Contains(err.Error(), "python_image") {
		t.Fatalf("python312: %v", err)
	}
	// secrets: one not in the store is refused; one in it is not baked
	// into the image's environment
	w = wl()
	w.Env = map[string]ir.EnvVal{"TOKEN": {Kind: "secret", Name: "api"}}
	if _, err := Prepare(w, base, tmp, func(n string) bool { return n == "other" }); code(err) != ir.ESecretNotFound || !strings.Contains(err.Error(), "secret set") {
		t.Fatalf("secret: %v", err)
	}
	clean := t.TempDir()
	os.WriteFile(filepath.Join(clean, "app.py"), nil, 0o644)
	st, err := Prepare(w, clean, tmp, func(n string) bool { return n == "api" })
	if err != nil {
		t.Fatalf("secret in store: %v", err)
	}
	if _, baked := st.Manifest.Env["TOKEN"]; baked {
		t.Fatalf("secret env baked into the image: %v", st.Manifest.Env)
	}
	st.Remove()
}

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		pats []string
		rel  string
		want bool
	}{
		{[]string{"**"}, "a/b/c", true},
		{[]string{"**/*.py"}, "a.py", true},
		{[]string{"**/*.py"}, "x/y/a.py", true},
		{[]string{"*.py"}, "x/a.py", false},
		{[]string{"tests/**"}, "tests", true},
		{[]string{"tests"}, "tests/a", true},
		{[]string{"node_modules/**"}, "src/node_modules/x", false},
	} {
		if got := Match(c.pats, c.rel); got != c.want {
			t.Errorf("Match(%v, %q) = %v", c.pats, c.rel, got)
		}
	}
}

// TestPrepareOCIImage: an oci_image workload builds on the reference (the
// image builder pulls it), with no template and no packages.
func TestPrepareOCIImage(t *testing.T) {
	base := t.TempDir()
	os.WriteFile(filepath.Join(base, "app.py"), []byte("x"), 0o644)
	w := wl()
	w.Image = ir.Image{Kind: ir.ImageOCI, Ref: "127.0.0.1:5000/app:1"}
	st, err := Prepare(w, base, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Remove()
	if m := st.Manifest; m.Image != "127.0.0.1:5000/app:1" || m.Template != "" || len(m.Packages) != 0 || m.Workdir != "/app" {
		t.Fatalf("manifest %+v", m)
	}
}
