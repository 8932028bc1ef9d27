// Package termsafe makes text that came from the guest safe to print on
// the host's terminal: control characters (which drive the terminal:
// escape sequences, title changes, cursor moves, carriage returns that
// overwrite a line) and invalid UTF-8 are shown as escapes instead of
// being sent raw.
package termsafe

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Line escapes s for a single line of output: every control character,
// newlines included, becomes \xNN (\u00NN for C1 controls), and invalid
// UTF-8 bytes become \xNN.
func Line(s string) string { return escape(s, false) }

// Text is Line but keeps newlines and tabs, and drops the carriage
// return of a CRLF line end.
func Text(s string) string { return escape(s, true) }

func escape(s string, multiline bool) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case multiline && (r == '\n' || r == '\t'):
			b.WriteRune(r)
		case multiline && r == '\r' && i+1 < len(s) && s[i+1] == '\n':
			// CRLF: the serial console's line end.
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r >= 0x80 && r <= 0x9f:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// Writer escapes a stream as Text does, for output that arrives in
// chunks: an incomplete UTF-8 sequence or a carriage return at the end of
// a chunk is held until the next one (Flush writes what is held).
type Writer struct {
	w    io.Writer
	hold []byte
}

// NewWriter returns a Writer escaping to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

func (t *Writer) Write(p []byte) (int, error) {
	buf := append(t.hold, p...)
	t.hold = nil
	// Hold back a trailing partial rune or a trailing \r.
	cut := len(buf)
	for k := 1; k <= utf8.UTFMax && k <= len(buf); k++ {
		c := buf[len(buf)-k]
		if c < 0x80 {
			break
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(buf[len(buf)-k:]) {
				cut = len(buf) - k
			}
			break
		}
	}
	if cut == len(buf) && cut > 0 && buf[cut-1] == '\r' {
		cut--
	}
	t.hold = append([]byte(nil), buf[cut:]...)
	if _, err := io.WriteString(t.w, Text(string(buf[:cut]))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes whatever is held, escaped.
func (t *Writer) Flush() error {
	if len(t.hold) == 0 {
		return nil
	}
	s := Text(string(t.hold))
	t.hold = nil
	_, err := io.WriteString(t.w, s)
	return err
}
