package secret

import (
	"bytes"
	"io"
	"sort"
	"sync"
)

// Redactor replaces secret values with "[secret:NAME]".
type Redactor struct {
	pats []pattern
	max  int
}

type pattern struct {
	value []byte
	repl  []byte
}

// NewRedactor redacts the given values (name -> value). Longer values are
// tried first, so a value containing another is replaced whole.
func NewRedactor(values map[string][]byte) *Redactor {
	r := &Redactor{}
	for name, v := range values {
		if len(v) == 0 {
			continue
		}
		r.pats = append(r.pats, pattern{value: v, repl: []byte("[secret:" + name + "]")})
		if len(v) > r.max {
			r.max = len(v)
		}
	}
	sort.Slice(r.pats, func(i, j int) bool {
		if len(r.pats[i].value) != len(r.pats[j].value) {
			return len(r.pats[i].value) > len(r.pats[j].value)
		}
		return bytes.Compare(r.pats[i].value, r.pats[j].value) < 0
	})
	return r
}

// Empty reports whether there is nothing to redact.
func (r *Redactor) Empty() bool { return r == nil || len(r.pats) == 0 }

// Bytes returns b with every value replaced.
func (r *Redactor) Bytes(b []byte) []byte {
	if r.Empty() {
		return b
	}
	out, _ := r.redact(b, true)
	return out
}

// String returns s with every value replaced.
func (r *Redactor) String(s string) string { return string(r.Bytes([]byte(s))) }

// redact scans b. Unless final, a possible start of a value within the
// last max-1 bytes is held back and returned as the remainder.
func (r *Redactor) redact(b []byte, final bool) (out, rest []byte) {
	var buf bytes.Buffer
	i := 0
	for i < len(b) {
		if !final && len(b)-i < r.max {
			// Could the tail be the beginning of a (longer) value?
			for _, p := range r.pats {
				if len(p.value) > len(b)-i && bytes.HasPrefix(p.value, b[i:]) {
					return buf.Bytes(), append([]byte(nil), b[i:]...)
				}
			}
		}
		matched := false
		for _, p := range r.pats {
			if bytes.HasPrefix(b[i:], p.value) {
				buf.Write(p.repl)
				i += len(p.value)
				matched = true
				break
			}
		}
		if matched {
			continue
		}
		buf.WriteByte(b[i])
		i++
	}
	return buf.Bytes(), nil
}

// Writer returns a writer that redacts what it passes to w. Close (or
// Flush) writes what was held back; it does not close w.
func (r *Redactor) Writer(w io.Writer) *Writer { return &Writer{r: r, w: w} }

// Writer is a redacting writer; safe for concurrent use.
type Writer struct {
	mu   sync.Mutex
	r    *Redactor
	w    io.Writer
	held []byte
}

func (rw *Writer) Write(p []byte) (int, error) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if rw.r.Empty() {
		return rw.w.Write(p)
	}
	out, rest := rw.r.redact(append(rw.held, p...), false)
	rw.held = rest
	if len(out) > 0 {
		if _, err := rw.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush writes what was held back.
func (rw *Writer) Flush() error {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if len(rw.held) == 0 {
		return nil
	}
	out, _ := rw.r.redact(rw.held, true)
	rw.held = nil
	_, err := rw.w.Write(out)
	return err
}

// Close flushes.
func (rw *Writer) Close() error { return rw.Flush() }
