package runtime

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
)

type countingReaderAt struct {
	r    io.ReaderAt
	read int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.read += int64(n)
	return n, err
}

// TestLogsTailReadsFromEnd is issue 11 item 13: `logs -n N` reads the
// end of the console log, not the whole file into memory.
func TestLogsTailReadsFromEnd(t *testing.T) {
	var b bytes.Buffer
	for i := 0; i < 400000; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	data := b.Bytes()
	for _, tc := range []struct {
		n    int
		want string
	}{
		{1, "line 399999\n"},
		{3, "line 399997\nline 399998\nline 399999\n"},
	} {
		c := &countingReaderAt{r: bytes.NewReader(data)}
		got, n, err := tailLinesAt(c, int64(len(data)), tc.n)
		if err != nil || string(got) != tc.want || n != tc.n {
			t.Fatalf("tail %d: %q (%d lines), %v", tc.n, got, n, err)
		}
		if c.read > 64<<10 {
			t.Fatalf("tail %d read %d bytes of a %d byte log", tc.n, c.read, len(data))
		}
	}
	// No final newline, fewer lines than asked, empty.
	got, n, _ := tailLinesAt(strings.NewReader("a\nb"), 3, 5)
	if string(got) != "a\nb" || n != 2 {
		t.Fatalf("short: %q %d", got, n)
	}
	if got, n, _ := tailLinesAt(strings.NewReader(""), 0, 5); len(got) != 0 || n != 0 {
		t.Fatalf("empty: %q %d", got, n)
	}
}
