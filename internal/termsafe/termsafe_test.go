package termsafe

import (
	"bytes"
	"strings"
	"testing"
)

func TestLineAndText(t *testing.T) {
	for in, want := range map[string]string{
		"plain text":       "plain text",
		"héllo ✓":          "héllo ✓",
		"\x1b]0;pwned\x07": `\x1b]0;pwned\x07`,
		"a\x1b[2Jb":        `a\x1b[2Jb`,
		"cr\roverwrite":    `cr\x0doverwrite`,
		"two\nlines":       `two\x0alines`,
		"bad \xff utf8":    `bad \xff utf8`,
		"c1 \u009b31m":     `c1 \u009b31m`,
		"del\x7f":          `del\x7f`,
	} {
		if got := Line(in); got != want {
			t.Errorf("Line(%q) = %q, want %q", in, got, want)
		}
	}
	if got := Text("a\r\nb\tc\n\x1b[0m"); got != "a\nb\tc\n\\x1b[0m" {
		t.Errorf("Text: %q", got)
	}
}

func TestWriterChunks(t *testing.T) {
	in := "ok ✓\r\n\x1b[31mred\r\nlast\rX"
	for split := 0; split <= len(in); split++ {
		var out bytes.Buffer
		w := NewWriter(&out)
		w.Write([]byte(in[:split]))
		w.Write([]byte(in[split:]))
		w.Flush()
		if got, want := out.String(), "ok ✓\n\\x1b[31mred\nlast\\x0dX"; got != want {
			t.Fatalf("split %d: %q, want %q", split, got, want)
		}
		if strings.ContainsRune(out.String(), 0x1b) {
			t.Fatal("raw escape")
		}
	}
}
