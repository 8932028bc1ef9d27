package image

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/pierrec/lz4/v4"
)

var (
	elfMagic       = []byte{0x7f, 'E', 'L', 'F'}
	lz4LegacyMagic = []byte{0x02, 0x21, 0x4c, 0x18}
	gzipMagic      = []byte{0x1f, 0x8b, 0x08}
	xzMagic        = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	zstdMagic      = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

const (
	// lz4LegacyBlock is the decompressed size of every block of an LZ4 legacy
	// frame except the last one.
	lz4LegacyBlock = 8 << 20
	// maxVmlinux bounds the decompressed kernel, so that a corrupt or hostile
	// input cannot make us allocate without limit.
	maxVmlinux = 512 << 20
)

// ExtractVmlinux finds the compressed kernel inside a bzImage and returns the
// uncompressed ELF vmlinux.
//
// It prefers the payload located by the x86 boot protocol header
// (payload_offset/payload_length) and falls back to scanning for compression
// magics, as the kernel's scripts/extract-vmlinux does. LZ4 (legacy frame, the
// format of CONFIG_KERNEL_LZ4) and gzip are supported; xz and zstd payloads are
// reported as unsupported.
func ExtractVmlinux(bzImage []byte) ([]byte, error) {
	if bytes.HasPrefix(bzImage, elfMagic) {
		return nil, errors.New("extract vmlinux: input is already an ELF file, not a bzImage")
	}
	var errs []error
	if payload, ok := bzPayload(bzImage); ok {
		out, err := decompressKernel(payload)
		if err == nil && len(payload) >= 4 {
			// The kernel build appends the decompressed length.
			if want := binary.LittleEndian.Uint32(payload[len(payload)-4:]); uint64(want) != uint64(len(out)) {
				err = fmt.Errorf("decompressed %d bytes, header says %d", len(out), want)
			}
		}
		if err == nil {
			return out, nil
		}
		errs = append(errs, fmt.Errorf("boot header payload: %w", err))
	}
	// Fallback: try every occurrence of a known magic, like extract-vmlinux.
	for _, m := range [][]byte{lz4LegacyMagic, gzipMagic} {
		for off := 0; ; {
			i := bytes.Index(bzImage[off:], m)
			if i < 0 {
				break
			}
			out, err := decompressKernel(bzImage[off+i:])
			if err == nil {
				return out, nil
			}
			if len(errs) < 8 {
				errs = append(errs, fmt.Errorf("offset %d: %w", off+i, err))
			}
			off += i + 1
		}
	}
	for _, m := range [][]byte{xzMagic, zstdMagic} {
		if bytes.Contains(bzImage, m) {
			errs = append(errs, errors.New("found an xz or zstd stream, which is not supported (Debian's cloud kernel uses LZ4)"))
			break
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("extract vmlinux: no LZ4 or gzip compressed kernel found in input")
	}
	return nil, fmt.Errorf("extract vmlinux: no compressed ELF kernel found: %w", errors.Join(errs...))
}

// bzPayload returns the compressed payload named by the boot protocol header
// of an x86 bzImage (protocol 2.08 or later).
func bzPayload(b []byte) ([]byte, bool) {
	if len(b) < 0x250 || string(b[0x202:0x206]) != "HdrS" {
		return nil, false
	}
	if binary.LittleEndian.Uint16(b[0x206:]) < 0x208 {
		return nil, false
	}
	setupSects := int(b[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := uint64(setupSects+1)*512 + uint64(binary.LittleEndian.Uint32(b[0x248:]))
	n := uint64(binary.LittleEndian.Uint32(b[0x24c:]))
	if n == 0 || off+n > uint64(len(b)) {
		return nil, false
	}
	return b[off : off+n], true
}

// decompressKernel decompresses a stream starting at the beginning of p and
// checks that the result is an ELF image.
func decompressKernel(p []byte) ([]byte, error) {
	var out []byte
	var err error
	switch {
	case bytes.HasPrefix(p, lz4LegacyMagic):
		out, err = unlz4Legacy(p)
	case bytes.HasPrefix(p, gzipMagic):
		out, err = gunzip(p)
	case bytes.HasPrefix(p, xzMagic), bytes.HasPrefix(p, zstdMagic):
		return nil, errors.New("xz and zstd compressed kernels are not supported")
	default:
		return nil, errors.New("unknown compression")
	}
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(out, elfMagic) {
		return nil, errors.New("decompressed data is not an ELF image")
	}
	return out, nil
}

// unlz4Legacy decodes an LZ4 legacy frame: the magic, then blocks each
// preceded by its little-endian compressed size, every block but the last
// decompressing to exactly 8 MiB. The stream ends at the end of input, at a
// short block, or at a size that cannot be a block (the kernel build appends
// the decompressed length after the stream). A repeated magic starts a new
// concatenated frame.
func unlz4Legacy(p []byte) ([]byte, error) {
	p = p[len(lz4LegacyMagic):]
	maxBlock := lz4.CompressBlockBound(lz4LegacyBlock)
	out := make([]byte, 0, 64<<20)
	for len(p) >= 4 {
		if bytes.HasPrefix(p, lz4LegacyMagic) {
			p = p[4:]
			continue
		}
		size := int(binary.LittleEndian.Uint32(p))
		if size == 0 || size > maxBlock || size > len(p)-4 {
			if len(out) == 0 {
				return nil, errors.New("lz4: invalid first block size")
			}
			break
		}
		block := p[4 : 4+size]
		p = p[4+size:]
		if len(out)+lz4LegacyBlock > maxVmlinux {
			return nil, fmt.Errorf("lz4: output exceeds %d bytes", maxVmlinux)
		}
		start := len(out)
		out = slices.Grow(out, lz4LegacyBlock)[:start+lz4LegacyBlock]
		n, err := lz4.UncompressBlock(block, out[start:])
		if err != nil {
			return nil, fmt.Errorf("lz4: block at output offset %d: %w", start, err)
		}
		out = out[:start+n]
		if n < lz4LegacyBlock {
			break
		}
	}
	if len(out) == 0 {
		return nil, errors.New("lz4: empty stream")
	}
	return out, nil
}

// gunzip decompresses a single gzip member, ignoring anything after it.
func gunzip(p []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(p))
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	zr.Multistream(false)
	out, err := io.ReadAll(io.LimitReader(zr, maxVmlinux+1))
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	if len(out) > maxVmlinux {
		return nil, fmt.Errorf("gzip: output exceeds %d bytes", maxVmlinux)
	}
	return out, nil
}
