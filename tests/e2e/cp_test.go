package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCpOutHostileGuest boots one sandbox whose guest builds the trees a
// hostile (or merely ordinary: a Python venv) workload makes, and checks
// what `mvmctl cp` out does with them on the host (docs/security.md, "Copy
// out of the guest").
func TestCpOutHostileGuest(t *testing.T) {
	e := newEnv(t)
	if r := e.run("up", "--name", "cpo"); r.code != 0 {
		t.Fatalf("up: %s", r)
	}
	defer func() {
		e.must("down", "cpo")
		e.assertClean()
	}()
	e.must("exec", "cpo", "--", "sh", "-c", `set -e
		mkdir -p /tmp/venv/bin /tmp/venv/lib
		echo py > /tmp/venv/lib/real
		ln -s /etc/passwd /tmp/venv/passwd
		ln -s /usr/bin/python3 /tmp/venv/bin/python
		ln -s ../lib/real /tmp/venv/bin/rel
		ln -s / /tmp/venv/root
		mkdir -p /tmp/modes/open
		chmod 0777 /tmp/modes/open
		chmod 1777 /tmp/modes
		echo s > /tmp/modes/suid && chmod 4777 /tmp/modes/suid
		echo g > /tmp/modes/sgid && chmod 2775 /tmp/modes/sgid
		mkdir -p /tmp/out
		echo a > /tmp/out/a
		dd if=/dev/zero of=/tmp/out/z bs=1024 count=64 2>/dev/null`)

	t.Run("absolute-symlink-copied-as-link", func(t *testing.T) {
		e := *e
		e.t = t
		dst := t.TempDir()
		e.must("cp", "cpo:/tmp/venv", dst)
		for p, want := range map[string]string{"passwd": "/etc/passwd", "bin/python": "/usr/bin/python3",
			"bin/rel": "../lib/real", "root": "/"} {
			if got, err := os.Readlink(filepath.Join(dst, "venv", p)); err != nil || got != want {
				t.Errorf("%s: %q %v, want a link to %q", p, got, err, want)
			}
		}
		if b, _ := os.ReadFile(filepath.Join(dst, "venv", "bin", "rel")); string(b) != "py\n" {
			t.Errorf("relative link does not resolve in the copy: %q", b)
		}
		if ents, _ := os.ReadDir(dst); len(ents) != 1 {
			t.Errorf("dst holds %v, want only venv", ents)
		}
	})

	t.Run("modes-clamped", func(t *testing.T) {
		e := *e
		e.t = t
		dst := t.TempDir()
		e.must("cp", "cpo:/tmp/modes", dst)
		for p, want := range map[string]os.FileMode{"": os.ModeDir | 0o755, "open": os.ModeDir | 0o755,
			"suid": 0o755, "sgid": 0o755} {
			fi, err := os.Lstat(filepath.Join(dst, "modes", p))
			if err != nil || fi.Mode() != want {
				t.Errorf("%q: mode %v %v, want %v", p, fi.Mode(), err, want)
			}
		}
	})

	t.Run("failure-removes-what-it-created", func(t *testing.T) {
		e := *e
		e.t = t
		dst := t.TempDir()
		// Merged into an existing directory: "a" (2 bytes) comes before
		// "z" (64 KiB), which is over the cap.
		os.Mkdir(filepath.Join(dst, "out"), 0o750)
		os.WriteFile(filepath.Join(dst, "out", "mine"), []byte("mine"), 0o600)
		r := e.expect(8, "cp", "--max-bytes", "1000", "cpo:/tmp/out", dst)
		if !strings.Contains(r.stderr, "1000 bytes") {
			t.Errorf("message: %q", r.stderr)
		}
		if ents, _ := os.ReadDir(filepath.Join(dst, "out")); len(ents) != 1 || ents[0].Name() != "mine" {
			t.Errorf("a failed copy changed the destination: %v", ents)
		}
		if ents, _ := os.ReadDir(dst); len(ents) != 1 {
			t.Errorf("a failed copy left %v", ents)
		}
		// As a new name: nothing at all is left.
		e.expect(8, "cp", "--max-bytes", "1000", "cpo:/tmp/out", filepath.Join(dst, "new"))
		if _, err := os.Lstat(filepath.Join(dst, "new")); !os.IsNotExist(err) {
			t.Errorf("a failed copy left %s", filepath.Join(dst, "new"))
		}
		// Within the cap (and with the default one) the copy goes through.
		e.must("cp", "--max-bytes", "65538", "cpo:/tmp/out", filepath.Join(dst, "ok"))
		e.must("cp", "cpo:/tmp/out", filepath.Join(dst, "ok2"))
		e.expect(2, "cp", "--max-bytes", "-1", "cpo:/tmp/out", filepath.Join(dst, "x"))
	})
}
