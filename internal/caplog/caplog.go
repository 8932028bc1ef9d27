// Package caplog writes a log file that cannot grow without bound: when
// the file reaches its cap it is renamed to PATH.1 (replacing the previous
// generation) and a new file is started, so at most two caps of bytes are
// ever on disk.
package caplog

import (
	"fmt"
	"os"
	"sync"
)

// Old is the suffix of the previous generation.
const Old = ".1"

// Writer is a capped, rotating log file. It is safe for concurrent use.
type Writer struct {
	path string
	max  int64

	mu sync.Mutex
	f  *os.File
	n  int64
}

// Create opens the log at path (mode 0600), appending to what is there
// (which counts towards the cap), rotating every max bytes.
func Create(path string, max int64) (*Writer, error) {
	if max <= 0 {
		return nil, fmt.Errorf("caplog: cap must be positive, got %d", max)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Writer{path: path, max: max, f: f, n: st.Size()}, nil
}

// Write appends p, rotating as often as needed.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	total := len(p)
	for len(p) > 0 {
		if w.n >= w.max {
			if err := w.rotate(); err != nil {
				return total - len(p), err
			}
		}
		k := int64(len(p))
		if room := w.max - w.n; k > room {
			k = room
		}
		m, err := w.f.Write(p[:k])
		w.n += int64(m)
		p = p[m:]
		if err != nil {
			return total - len(p), err
		}
	}
	return total, nil
}

func (w *Writer) rotate() error {
	if err := w.f.Close(); err != nil {
		return err
	}
	if err := os.Rename(w.path, w.path+Old); err != nil {
		return err
	}
	f, err := os.OpenFile(w.path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	w.f, w.n = f, 0
	return nil
}

// Close closes the current file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.f.Close()
}
