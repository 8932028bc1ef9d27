package image

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/pierrec/lz4/v4"
)

func TestExtractVmlinuxReal(t *testing.T) {
	tree, k := realKernel(t)
	bz, err := os.ReadFile(filepath.Join(tree, "boot", "vmlinuz-"+k.Version))
	if err != nil {
		t.Fatal(err)
	}
	out, err := ExtractVmlinux(bz)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out, elfMagic) {
		t.Fatalf("result does not start with the ELF magic: %x", out[:4])
	}
	f, err := elf.NewFile(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("result is not a valid ELF: %v", err)
	}
	if f.Machine != elf.EM_X86_64 {
		t.Fatalf("machine %v", f.Machine)
	}
	sum := sha256.Sum256(out)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != k.Digest {
		t.Fatalf("digest %s, installed kernel says %s", got, k.Digest)
	}

	// The magic-scan fallback finds the same stream without the header.
	noHdr := bytes.Clone(bz)
	copy(noHdr[0x202:], "XXXX")
	out2, err := ExtractVmlinux(noHdr)
	if err != nil {
		t.Fatalf("fallback scan: %v", err)
	}
	if !bytes.Equal(out, out2) {
		t.Fatal("fallback scan gave different bytes")
	}
}

func TestExtractVmlinuxGarbage(t *testing.T) {
	inputs := map[string][]byte{
		"empty":     nil,
		"text":      []byte("this is not a kernel"),
		"lz4 magic": append(bytes.Clone(lz4LegacyMagic), 0xff, 0xff, 0x00, 0x00, 1, 2, 3),
		"lz4 junk":  append(bytes.Clone(lz4LegacyMagic), 0x08, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8),
		"elf":       append(bytes.Clone(elfMagic), 2, 1, 1),
		"xz":        append([]byte("xxxx"), xzMagic...),
	}
	for name, in := range inputs {
		if _, err := ExtractVmlinux(in); err == nil {
			t.Errorf("%s: expected an error", name)
		}
	}
}

func TestExtractVmlinuxGzip(t *testing.T) {
	payload := append(bytes.Clone(elfMagic), bytes.Repeat([]byte("kernel"), 1000)...)
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(payload)
	zw.Close()
	img := append([]byte("some setup code"), z.Bytes()...)
	img = append(img, "trailing data"...)
	out, err := ExtractVmlinux(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, payload) {
		t.Fatal("gzip payload mismatch")
	}
}

func TestExtractVmlinuxLZ4MultiBlock(t *testing.T) {
	// More than one 8 MiB legacy block, written by an independent encoder.
	payload := append(bytes.Clone(elfMagic), bytes.Repeat([]byte("0123456789abcdef"), (9<<20)/16)...)
	var z bytes.Buffer
	zw := lz4.NewWriter(&z)
	if err := zw.Apply(lz4.LegacyOption(true)); err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	img := append([]byte("setup code"), z.Bytes()...)
	img = binary.LittleEndian.AppendUint32(img, uint32(len(payload))) // like the kernel build
	img = append(img, bytes.Repeat([]byte{0xcc}, 100)...)
	out, err := ExtractVmlinux(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, payload) {
		t.Fatalf("lz4 payload mismatch: got %d bytes, want %d", len(out), len(payload))
	}
}
