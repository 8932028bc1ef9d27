package oci

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/image/oci/ocitest"
)

type E = ocitest.Entry

func unpack(t *testing.T, layers ...[]E) (string, error) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	u, err := NewUnpacker(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, l := range layers {
		if err := u.Layer(bytes.NewReader(ocitest.Tar(l))); err != nil {
			return dir, err
		}
	}
	return dir, nil
}

func TestUnpackWhiteoutsOpaqueLinks(t *testing.T) {
	dir, err := unpack(t,
		[]E{
			{Name: "etc/", Type: tar.TypeDir},
			{Name: "etc/keep", Body: "keep"},
			{Name: "etc/gone", Body: "gone"},
			{Name: "opt/", Type: tar.TypeDir},
			{Name: "opt/old", Body: "old"},
			{Name: "opt/sub/", Type: tar.TypeDir},
			{Name: "opt/sub/older", Body: "x"},
			{Name: "bin/", Type: tar.TypeDir},
			{Name: "bin/tool", Mode: 0o4755, UID: 1000, GID: 1001, Body: "#!/bin/sh\n"},
			{Name: "bin/alias", Type: tar.TypeLink, Link: "bin/tool"},
			{Name: "bin/sym", Type: tar.TypeSymlink, Link: "tool"},
			{Name: "dev/", Type: tar.TypeDir},
			{Name: "dev/null", Type: tar.TypeChar},
		},
		[]E{
			{Name: "etc/.wh.gone"},
			{Name: "opt/", Type: tar.TypeDir},
			{Name: "opt/new", Body: "new"},
			{Name: "opt/sub/", Type: tar.TypeDir},
			{Name: "opt/sub/newer", Body: "y"},
			{Name: "opt/.wh..wh..opq"},
		})
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{
		"etc/keep": true, "etc/gone": false, "opt/old": false, "opt/new": true,
		"opt/sub/older": false, "opt/sub/newer": true, "dev/null": false,
	} {
		_, err := os.Lstat(filepath.Join(dir, p))
		if (err == nil) != want {
			t.Errorf("%s exists=%v, want %v", p, err == nil, want)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "bin/tool"))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 || st.Uid != 1000 || st.Gid != 1001 {
		t.Errorf("bin/tool: mode %v uid %d gid %d, want setuid 0755 1000:1001", fi.Mode(), st.Uid, st.Gid)
	}
	if st.Nlink != 2 {
		t.Errorf("bin/tool has %d links, want 2 (bin/alias is a hard link)", st.Nlink)
	}
	if l, err := os.Readlink(filepath.Join(dir, "bin/sym")); err != nil || l != "tool" {
		t.Errorf("bin/sym -> %q, %v", l, err)
	}
}

func TestUnpackRefusesHostileLayers(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]E{
		"dotdot":   {{Name: "../escape", Body: "x"}},
		"dotdot2":  {{Name: "a/../../escape", Body: "x"}},
		"absolute": {{Name: "/escape", Body: "x"}},
		// an absolute symlink to the host, then a write through it
		"abs symlink write": {
			{Name: "etc", Type: tar.TypeSymlink, Link: outside},
			{Name: "etc/escape", Body: "x"},
		},
		"relative symlink write": {
			{Name: "up", Type: tar.TypeSymlink, Link: "../../../../../../../../" + outside},
			{Name: "up/escape", Body: "x"},
		},
		"hard link outside": {{Name: "passwd", Type: tar.TypeLink, Link: "../../../../etc/passwd"}},
		// a file that declares 64 TiB (a "sparse" bomb): refused before a byte is written
		"huge file": {{Name: "big", Size: 64 << 40, Body: "x"}},
	}
	for name, l := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := unpack(t, l)
			if !errors.Is(err, ErrUnsafeLayer) {
				t.Fatalf("err = %v, want ErrUnsafeLayer", err)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Fatalf("something was written outside the root: %v", ents)
			}
		})
	}
}

func TestUnpackSparseRefused(t *testing.T) {
	// a GNU sparse member ('S') of 1 TiB real size with one byte of data,
	// made by hand: archive/tar does not write sparse files
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "sparse", Typeflag: tar.TypeReg, Size: 512, Mode: 0o644, Format: tar.FormatGNU}); err != nil {
		t.Fatal(err)
	}
	tw.Write(make([]byte, 512))
	tw.Close()
	b := buf.Bytes()
	hdr := b[:512]
	hdr[156] = tar.TypeGNUSparse
	copy(hdr[386:], fmt.Sprintf("%011o\x00%011o\x00", 0, 512)) // one region: offset 0, 512 bytes
	copy(hdr[483:], fmt.Sprintf("%011o\x00", int64(1)<<40))    // real size
	for i := 148; i < 156; i++ {
		hdr[i] = ' '
	}
	sum := 0
	for _, c := range hdr {
		sum += int(c)
	}
	copy(hdr[148:], fmt.Sprintf("%06o\x00 ", sum))
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	u, err := NewUnpacker(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	err = u.Layer(bytes.NewReader(b))
	if !errors.Is(err, ErrUnsafeLayer) {
		t.Fatalf("err = %v, want ErrUnsafeLayer for a sparse member", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "sparse")); err == nil {
		t.Fatal("the sparse member was written")
	}
}
