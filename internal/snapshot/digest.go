package snapshot

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// DigestAlgorithm names how file digests are computed: SHA-256 over the
// file's size and the SHA-256 of each 1 MiB chunk of its content in order.
// It is a function of the content alone (a hole and written zeros digest
// alike), and lets a sparse disk image be digested, and copied, reading
// only the parts that hold data.
const DigestAlgorithm = "sha256-chunked-1MiB"

const chunkSize = 1 << 20

// zeroChunk is a chunk of zeros, and fullZeroDigest its digest (the one
// holes need; a short last chunk is hashed). Both are made on first use:
// hashing 1 MiB at package init cost every mvmctl process 2-5 ms of
// start-up, snapshot or not.
var zeroChunk = sync.OnceValue(func() []byte { return make([]byte, chunkSize) })

var fullZeroDigest = sync.OnceValue(func() [sha256.Size]byte { return sha256.Sum256(zeroChunk()) })

// digester accumulates a DigestAlgorithm digest, chunk by chunk.
type digester struct {
	outer []byte // size, then one chunk digest per chunk
}

func newDigester(size int64) *digester {
	d := &digester{outer: make([]byte, 8, 8+32*(size/chunkSize+1))}
	binary.BigEndian.PutUint64(d.outer, uint64(size))
	return d
}

func (d *digester) chunk(b []byte) {
	if len(b) == chunkSize && isZero(b) {
		zd := fullZeroDigest()
		d.outer = append(d.outer, zd[:]...)
		return
	}
	s := sha256.Sum256(b)
	d.outer = append(d.outer, s[:]...)
}

func (d *digester) zeroChunk() {
	zd := fullZeroDigest()
	d.outer = append(d.outer, zd[:]...)
}

func (d *digester) sum() string {
	s := sha256.Sum256(d.outer)
	return "sha256:" + hex.EncodeToString(s[:])
}

func isZero(b []byte) bool { return bytes.Equal(b, zeroChunk()[:len(b)]) }

// dataAfter returns the offset of the first data at or after off (SEEK_DATA),
// or size when there is none. Filesystems without SEEK_DATA report all data.
func dataAfter(f *os.File, off, size int64) int64 {
	n, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if err != nil {
		if errors.Is(err, unix.ENXIO) {
			return size // only a hole from here on
		}
		return off
	}
	return n
}

// walk reads f chunk by chunk, skipping whole chunks that lie in a hole,
// and calls fn with each chunk's offset and bytes (nil for a hole chunk).
func walk(f *os.File, size int64, fn func(off int64, b []byte) error) error {
	buf := make([]byte, chunkSize)
	for off := int64(0); off < size; off += chunkSize {
		n := int64(chunkSize)
		if size-off < n {
			n = size - off
		}
		if n == chunkSize && dataAfter(f, off, size) >= off+chunkSize {
			if err := fn(off, nil); err != nil {
				return err
			}
			continue
		}
		if _, err := f.ReadAt(buf[:n], off); err != nil && !(err == io.EOF && n == 0) {
			return fmt.Errorf("read %s at %d: %w", f.Name(), off, err)
		}
		if err := fn(off, buf[:n]); err != nil {
			return err
		}
	}
	return nil
}

// FileDigest is the DigestAlgorithm digest of the file at path.
func FileDigest(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	size := fi.Size()
	d := newDigester(size)
	err = walk(f, size, func(_ int64, b []byte) error {
		if b == nil {
			d.zeroChunk()
		} else {
			d.chunk(b)
		}
		return nil
	})
	if err != nil {
		return "", 0, err
	}
	return d.sum(), size, nil
}

// CopySparse copies src to dst (created with mode 0600; it must not exist)
// leaving holes where src has holes or zero chunks, syncs it, and returns
// the digest of what it copied: a copy and its verification in one read.
func CopySparse(src, dst string) (string, error) { return copySparse(src, dst, true) }

// CopySparseUnsynced is CopySparse without the sync: for a working copy
// whose durability is its user's (a VM's disk: the guest's first flush
// syncs the file, whoever wrote its pages).
func CopySparseUnsynced(src, dst string) (string, error) { return copySparse(src, dst, false) }

func copySparse(src, dst string, sync bool) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", err
	}
	size := fi.Size()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		out.Close()
		if !ok {
			os.Remove(dst)
		}
	}()
	if err := out.Truncate(size); err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	d := newDigester(size)
	err = walk(in, size, func(off int64, b []byte) error {
		if b == nil {
			d.zeroChunk()
			return nil
		}
		d.chunk(b)
		if isZero(b) {
			return nil
		}
		if _, err := out.WriteAt(b, off); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if sync {
		if err := out.Sync(); err != nil {
			return "", fmt.Errorf("copy %s: %w", src, err)
		}
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	ok = true
	return d.sum(), nil
}
