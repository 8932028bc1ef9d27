package decl

import (
	"errors"
	"strings"
	"testing"
)

// TestDeclarationCaps: a declaration file over 4 MiB and a literal nested
// deeper than 32 levels are refused with E_TOO_LARGE.
func TestDeclarationCaps(t *testing.T) {
	code := func(src string) string {
		_, err := compileString(t, "a.py", src)
		var de *Error
		if errors.As(err, &de) {
			return de.Code
		}
		return ""
	}
	head := "import mvm\n@mvm.app(image=mvm.python_image())\ndef f(): pass\n"
	if c := code(head + "#" + strings.Repeat("x", MaxSourceBytes) + "\n"); c != ETooLarge {
		t.Errorf("file over %d bytes: %q", MaxSourceBytes, c)
	}
	nested := func(n int) string {
		return "import mvm\n@mvm.app(image=mvm.python_image(), name=" + strings.Repeat("[", n) + "1" + strings.Repeat("]", n) + ")\ndef f(): pass\n"
	}
	if c := code(nested(maxDepth + 1)); c != ETooLarge {
		t.Errorf("%d levels: %q", maxDepth+1, c)
	}
	if c := code(nested(maxDepth - 1)); c == ETooLarge {
		t.Errorf("%d levels refused as too large", maxDepth-1)
	}
}
