package agentapi

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type member struct {
	name, link string
	typ        byte
	mode       int64
	data       string
}

func mkTar(t testing.TB, ms ...member) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, m := range ms {
		h := &tar.Header{Name: m.name, Linkname: m.link, Typeflag: m.typ, Mode: m.mode, Size: int64(len(m.data)), ModTime: time.Unix(1700000000, 0)}
		if m.typ != tar.TypeReg {
			h.Size = 0
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(m.data))
		}
	}
	tw.Close()
	return b.Bytes()
}

// hostileDir returns dest (an existing dir) inside a sandbox dir with a
// sentinel beside it, and a check that nothing outside dest changed.
func hostileDir(t *testing.T) (dest string, check func()) {
	base := t.TempDir()
	dest = filepath.Join(base, "dest")
	os.Mkdir(dest, 0o755)
	outside := filepath.Join(base, "outside")
	os.Mkdir(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644)
	return dest, func() {
		ents, _ := os.ReadDir(base)
		if len(ents) != 2 {
			t.Errorf("something was written beside dest: %v", ents)
		}
		ents, _ = os.ReadDir(outside)
		if len(ents) != 1 {
			t.Errorf("something was written outside dest: %v", ents)
		}
		if b, _ := os.ReadFile(filepath.Join(outside, "keep")); string(b) != "keep" {
			t.Errorf("outside file changed: %q", b)
		}
	}
}

func TestExtractRefusesHostileStreams(t *testing.T) {
	cases := []struct {
		name string
		ms   []member
		kind FsKind
	}{
		{"absolute", []member{{name: "/etc/passwd", typ: tar.TypeReg, data: "x"}}, FsUnsafe},
		{"dotdot", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/../../outside/keep", typ: tar.TypeReg, data: "pwned"}}, FsUnsafe},
		{"dotdot-top", []member{{name: "../outside/keep", typ: tar.TypeReg, data: "pwned"}}, FsUnsafe},
		{"through-symlink", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/l", typ: tar.TypeSymlink, link: "."},
			{name: "t/esc", typ: tar.TypeSymlink, link: "l/.."}}, FsUnsafe},
		{"symlink-then-write", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/l", typ: tar.TypeSymlink, link: "sub"},
			{name: "t/sub/", typ: tar.TypeDir}, {name: "t/x", typ: tar.TypeSymlink, link: "../../outside"},
			{name: "t/x/keep", typ: tar.TypeReg, data: "pwned"}}, FsUnsafe},
		{"symlink-dir-swap", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/d", typ: tar.TypeSymlink, link: "sub"},
			{name: "t/sub/", typ: tar.TypeDir}, {name: "t/d/f", typ: tar.TypeReg, data: "x"}}, FsUnsafe},
		{"abs-symlink", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/l", typ: tar.TypeSymlink, link: "/etc"}}, FsUnsafe},
		{"escaping-symlink", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/l", typ: tar.TypeSymlink, link: "../outside"}}, FsUnsafe},
		{"two-tops", []member{{name: "a", typ: tar.TypeReg, data: "1"}, {name: "b", typ: tar.TypeReg, data: "2"}}, FsUnsafe},
		{"long", []member{{name: "t/" + strings.Repeat("a", MaxPathBytes), typ: tar.TypeReg, data: "1"}}, FsUnsafe},
		{"top-symlink", []member{{name: "t", typ: tar.TypeSymlink, link: "."}}, FsUnsafe},
		{"late-component", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/a", typ: tar.TypeSymlink, link: "x/.."},
			{name: "t/x", typ: tar.TypeSymlink, link: "."}}, FsUnsafe},
		{"dir-over-file", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/f", typ: tar.TypeReg, data: "1"}, {name: "t/f/", typ: tar.TypeDir}}, FsNotDir},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dest, check := hostileDir(t)
			_, err := ExtractTar(bytes.NewReader(mkTar(t, c.ms...)), dest, ExtractOptions{})
			if err == nil {
				t.Fatal("hostile stream was accepted")
			}
			if k := KindOf(err); k != c.kind {
				t.Errorf("kind %v, want %v (%v)", k, c.kind, err)
			}
			check()
		})
	}
}

func TestExtractStripsAndSkips(t *testing.T) {
	dest, check := hostileDir(t)
	tb := mkTar(t,
		member{name: "t/", typ: tar.TypeDir, mode: 0o7755},
		member{name: "t/suid", typ: tar.TypeReg, mode: 0o4755, data: "x"},
		member{name: "t/hard", typ: tar.TypeLink, link: "../../outside/keep"},
		member{name: "t/dev", typ: tar.TypeChar},
		member{name: "t/fifo", typ: tar.TypeFifo},
		member{name: "t/ok", typ: tar.TypeSymlink, link: "suid"},
	)
	st, err := ExtractTar(bytes.NewReader(tb), dest, ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 3 || st.Files != 1 || st.Symlinks != 1 || st.Dirs != 1 {
		t.Errorf("stats %+v", st)
	}
	fi, _ := os.Stat(filepath.Join(dest, "t", "suid"))
	if fi.Mode()&os.ModeSetuid != 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("mode %v: setuid must be stripped", fi.Mode())
	}
	di, _ := os.Stat(filepath.Join(dest, "t"))
	if di.Mode()&(os.ModeSetgid|os.ModeSetuid|os.ModeSticky) != 0 {
		t.Errorf("dir mode %v", di.Mode())
	}
	check()
}

func TestExtractCaps(t *testing.T) {
	dest, check := hostileDir(t)
	tb := mkTar(t, member{name: "t/", typ: tar.TypeDir}, member{name: "t/a", typ: tar.TypeReg, data: strings.Repeat("x", 100)})
	if _, err := ExtractTar(bytes.NewReader(tb), dest, ExtractOptions{MaxBytes: 50}); KindOf(err) != FsTooLarge {
		t.Errorf("MaxBytes: %v", err)
	}
	if _, err := ExtractTar(bytes.NewReader(tb), filepath.Join(dest, "n"), ExtractOptions{MaxMembers: 1}); KindOf(err) != FsTooLarge {
		t.Errorf("MaxMembers: %v", err)
	}
	check()
}

func TestTarRoundTrip(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(filepath.Join(src, "sub", "deep"), 0o755)
	os.WriteFile(filepath.Join(src, "exec.sh"), []byte("#!/bin/sh\n"), 0o750)
	os.WriteFile(filepath.Join(src, "sub", "deep", "f"), bytes.Repeat([]byte{1, 2, 3}, 70000), 0o600)
	os.WriteFile(filepath.Join(src, "empty"), nil, 0o644)
	os.Symlink("exec.sh", filepath.Join(src, "rel"))
	os.Symlink("../exec.sh", filepath.Join(src, "sub", "up"))
	os.Chmod(filepath.Join(src, "sub"), 0o711)
	var b bytes.Buffer
	if _, err := WriteTar(&b, src); err != nil {
		t.Fatal(err)
	}
	// "as": a destination that does not exist takes the tree's place.
	dst := filepath.Join(t.TempDir(), "copy")
	st, err := ExtractTar(bytes.NewReader(b.Bytes()), dst, ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Root != dst || st.Files != 3 || st.Symlinks != 2 || st.Dirs != 3 {
		t.Errorf("stats %+v", st)
	}
	for _, c := range []struct {
		p    string
		mode os.FileMode
	}{{"exec.sh", 0o750}, {"sub", 0o711 | os.ModeDir}, {"sub/deep/f", 0o600}, {"rel", os.ModeSymlink | 0o777}} {
		fi, err := os.Lstat(filepath.Join(dst, c.p))
		if err != nil || fi.Mode() != c.mode {
			t.Errorf("%s: %v %v, want %v", c.p, fi.Mode(), err, c.mode)
		}
	}
	if l, _ := os.Readlink(filepath.Join(dst, "sub", "up")); l != "../exec.sh" {
		t.Errorf("symlink target %q", l)
	}
	// "into": an existing directory receives the tree under its name, and
	// a second copy replaces files in place.
	into := t.TempDir()
	for i := 0; i < 2; i++ {
		if st, err = ExtractTar(bytes.NewReader(b.Bytes()), into, ExtractOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if st.Root != filepath.Join(into, "src") {
		t.Errorf("root %s", st.Root)
	}
	got, _ := os.ReadFile(filepath.Join(into, "src", "sub", "deep", "f"))
	if !bytes.Equal(got, bytes.Repeat([]byte{1, 2, 3}, 70000)) {
		t.Error("content differs")
	}
}

func FuzzExtractTar(f *testing.F) {
	f.Add(mkTar(f, member{name: "t/", typ: tar.TypeDir}, member{name: "t/a", typ: tar.TypeReg, data: "x"}))
	f.Add(mkTar(f, member{name: "t/l", typ: tar.TypeSymlink, link: "../x"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		dest, check := hostileDir(t)
		ExtractTar(bytes.NewReader(b), dest, ExtractOptions{MaxBytes: 1 << 20})
		check()
	})
}
