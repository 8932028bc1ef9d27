package oci

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/image/oci/ocitest"
)

// TestUnpackCapsAcrossLayers: the byte and member caps count all layers
// of an image together; the defaults are 32 GiB and 4M members.
func TestUnpackCapsAcrossLayers(t *testing.T) {
	run := func(maxBytes int64, maxItems int, layers ...[]E) error {
		dir := filepath.Join(t.TempDir(), "root")
		os.Mkdir(dir, 0o755)
		u, err := NewUnpacker(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		u.MaxBytes, u.MaxItems = maxBytes, maxItems
		for _, l := range layers {
			if err := u.Layer(bytes.NewReader(ocitest.Tar(l))); err != nil {
				return err
			}
		}
		return nil
	}
	a := []E{{Name: "a", Body: "12345"}, {Name: "b", Body: "12345"}}
	b := []E{{Name: "c", Body: "1"}}
	if err := run(10, 3, a); err != nil {
		t.Fatalf("at the caps: %v", err)
	}
	if err := run(10, 100, a, b); !errors.Is(err, ErrUnsafeLayer) {
		t.Errorf("11 bytes over two layers with a cap of 10: %v", err)
	}
	if err := run(100, 2, a, b); !errors.Is(err, ErrUnsafeLayer) {
		t.Errorf("3 members over two layers with a cap of 2: %v", err)
	}
	dir := t.TempDir()
	u, err := NewUnpacker(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if u.MaxBytes != 32<<30 || u.MaxItems != 4<<20 {
		t.Fatalf("defaults %d bytes, %d members; docs/images.md promises 32 GiB and 4M", u.MaxBytes, u.MaxItems)
	}
}
