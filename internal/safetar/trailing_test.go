package safetar

import (
	"archive/tar"
	"bytes"
	"path/filepath"
	"testing"
)

// TestTrailingBytesCapped: up to 1 MiB may follow the end of an archive
// (padding); more is refused and nothing is left in the destination.
func TestTrailingBytesCapped(t *testing.T) {
	tb := mkTar(t, member{name: "t/", typ: tar.TypeDir}, member{name: "t/a", typ: tar.TypeReg, data: "x"})
	ok := append(append([]byte(nil), tb...), make([]byte, maxTrailing)...)
	if _, err := Extract(bytes.NewReader(ok), t.TempDir(), Options{Name: "t"}); err != nil {
		t.Fatalf("1 MiB after the end refused: %v", err)
	}
	dest, check := hostileDir(t)
	bad := append(append([]byte(nil), tb...), make([]byte, maxTrailing+1)...)
	if _, err := Extract(bytes.NewReader(bad), filepath.Join(dest, "n"), Options{Name: "t"}); !is(err, ErrTooLarge) {
		t.Fatalf("1 MiB + 1 after the end: %v", err)
	}
	check()
}
