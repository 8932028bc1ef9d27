package agentapi

import (
	"bufio"
	"io"
)

// Chunked byte streams over gRPC.

type chunkWriter struct{ send func([]byte) error }

func (w chunkWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += ChunkBytes {
		end := min(off+ChunkBytes, len(p))
		if err := w.send(p[off:end]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// NewChunkWriter returns a buffered writer that sends chunks of at most
// ChunkBytes with send (which must not keep the slice). Flush it at the end.
func NewChunkWriter(send func([]byte) error) *bufio.Writer {
	return bufio.NewWriterSize(chunkWriter{send}, ChunkBytes)
}

type chunkReader struct {
	recv func() ([]byte, error)
	buf  []byte
	err  error
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		r.buf, r.err = r.recv()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// NewChunkReader reads the concatenated chunks that recv returns until it
// returns an error (io.EOF at the end).
func NewChunkReader(recv func() ([]byte, error)) io.Reader { return &chunkReader{recv: recv} }
