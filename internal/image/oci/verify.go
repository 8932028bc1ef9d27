package oci

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func newSHA() hash.Hash { return sha256.New() }

func newPeeker(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 64<<10) }

// verifier hashes what it reads and, at the end of the stream, fails
// unless the size and the digest are the ones expected. It also refuses
// to read past the expected size.
type verifier struct {
	r    io.Reader
	size int64
	n    int64
	want v1.Hash
	h    hash.Hash
	err  error
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if v.size >= 0 && int64(len(p)) > v.size-v.n+1 {
		p = p[:v.size-v.n+1]
	}
	n, err := v.r.Read(p)
	v.n += int64(n)
	v.h.Write(p[:n])
	if v.size >= 0 && v.n > v.size {
		v.err = fmt.Errorf("%w: %s is longer than its %d bytes", ErrDigestMismatch, v.want, v.size)
		return 0, v.err
	}
	if err != nil && err != io.EOF && v.n == v.size {
		// the source's own check (a registry blob reader verifies too)
		// failed at the end: say it the one way
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want.Hex {
			v.err = fmt.Errorf("%w: got sha256:%s, want %s", ErrDigestMismatch, got, v.want)
			return n, v.err
		}
	}
	if err == io.EOF {
		if v.size >= 0 && v.n != v.size {
			v.err = fmt.Errorf("%w: %s has %d bytes, the manifest says %d", ErrDigestMismatch, v.want, v.n, v.size)
			return n, v.err
		}
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want.Hex {
			v.err = fmt.Errorf("%w: got sha256:%s, want %s", ErrDigestMismatch, got, v.want)
			return n, v.err
		}
	}
	return n, err
}
