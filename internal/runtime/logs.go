package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/mvm-sandbox/mvm/internal/caplog"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/supervisor"
	"github.com/mvm-sandbox/mvm/internal/termsafe"
)

// LogOptions select what Logs prints.
type LogOptions struct {
	// Lines > 0 prints only the last Lines lines (read from the end of the
	// file, never the whole of it); 0 prints everything kept.
	Lines int
	// Follow keeps printing what is appended until the sandbox stops or
	// ctx ends.
	Follow bool
	// Raw writes the guest's bytes as they are; by default control
	// characters are escaped (the console is the guest's to write).
	Raw bool
	// Poll is the follow interval (200ms when 0).
	Poll time.Duration
}

// Logs writes a sandbox's console log (the guest's serial console, with
// the agent's log) to w. The log is capped and rotated by the supervisor;
// what is kept is the previous generation and the current file.
func (r *Runtime) Logs(ctx context.Context, nameOrID string, o LogOptions, w io.Writer) error {
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return err
	}
	if !o.Raw {
		tw := termsafe.NewWriter(w)
		defer tw.Flush()
		w = tw
	}
	path := filepath.Join(dir, supervisor.ConsoleLog)
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s has no console log yet", nameOrID)
		}
		return err
	}
	defer func() { f.Close() }()
	old := path + caplog.Old
	if o.Lines > 0 {
		cur, n, err := tailLines(f, o.Lines)
		if err != nil {
			return err
		}
		if n < o.Lines {
			if of, err := os.Open(old); err == nil {
				prev, _, _ := tailLines(of, o.Lines-n)
				of.Close()
				w.Write(prev)
			}
		}
		if _, err := w.Write(cur); err != nil {
			return err
		}
		if _, err := f.Seek(0, io.SeekEnd); err != nil {
			return err
		}
	} else {
		if of, err := os.Open(old); err == nil {
			io.Copy(w, of)
			of.Close()
		}
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
	}
	if !o.Follow {
		return nil
	}
	every := o.Poll
	if every <= 0 {
		every = 200 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		// Rotated: finish the old file, continue with the new one.
		if rotated(f, path) {
			io.Copy(w, f)
			nf, err := os.Open(path)
			if err == nil {
				f.Close()
				f = nf
				io.Copy(w, f)
			}
		}
		st, err := r.Get(nameOrID)
		if err != nil || !sandbox.Active(st.Status) {
			io.Copy(w, f)
			return nil
		}
	}
}

// rotated reports whether path no longer names the open file f.
func rotated(f *os.File, path string) bool {
	a, err1 := f.Stat()
	b, err2 := os.Stat(path)
	return err1 == nil && err2 == nil && !os.SameFile(a, b)
}

// maxTail bounds what a tail reads, whatever the line count asked for.
const maxTail = 16 << 20

// tailLines returns the last n lines of f (reading backwards from its
// end in blocks) and how many lines that is.
func tailLines(f *os.File, n int) ([]byte, int, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	return tailLinesAt(f, st.Size(), n)
}

func tailLinesAt(f io.ReaderAt, end int64, n int) ([]byte, int, error) {
	var buf []byte
	const block = 32 << 10
	for off := end; off > 0 && int64(len(buf)) < maxTail; {
		k := int64(block)
		if off < k {
			k = off
		}
		off -= k
		chunk := make([]byte, k)
		if _, err := f.ReadAt(chunk, off); err != nil && err != io.EOF {
			return nil, 0, err
		}
		buf = append(chunk, buf...)
		// Enough newlines: n lines end after the (n+1)th newline from the
		// end (a final newline ends the last line, it does not start one).
		body := bytes.TrimSuffix(buf, []byte("\n"))
		if bytes.Count(body, []byte("\n")) >= n {
			break
		}
	}
	if len(buf) == 0 {
		return nil, 0, nil
	}
	body := bytes.TrimSuffix(buf, []byte("\n"))
	lines := 0
	i := len(body)
	for lines < n {
		j := bytes.LastIndexByte(body[:i], '\n')
		lines++
		if j < 0 {
			return buf, lines, nil
		}
		i = j
		if lines == n {
			return buf[i+1:], lines, nil
		}
	}
	return buf, lines, nil
}
