package mcp

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/mvm-sandbox/mvm/internal/plan"
)

func TestCapBuffer(t *testing.T) {
	c := newCapBuffer(10)
	c.Write([]byte("hello "))
	c.Write([]byte("world, and more"))
	if got := c.text(); got != "hello worl" {
		t.Fatalf("text = %q", got)
	}
	if !c.truncated() || c.total != 21 {
		t.Fatalf("truncated=%v total=%d", c.truncated(), c.total)
	}
	small := newCapBuffer(10)
	small.Write([]byte("exact size"))
	if small.truncated() || small.text() != "exact size" {
		t.Fatalf("exact fit: truncated=%v %q", small.truncated(), small.text())
	}
}

func TestCapBufferUTF8(t *testing.T) {
	// "héllo" is 6 bytes; a cap of 2 cuts the é in half: the half is
	// dropped, not turned into U+FFFD.
	c := newCapBuffer(2)
	c.Write([]byte("héllo"))
	if got := c.text(); got != "h" {
		t.Fatalf("cut rune: %q", got)
	}
	// A 4-byte rune cut after 1, 2 and 3 bytes.
	for cut := 1; cut <= 3; cut++ {
		c := newCapBuffer(1 + cut)
		c.Write([]byte("a😀b"))
		if got := c.text(); got != "a" {
			t.Errorf("cut %d: %q", cut, got)
		}
	}
	// Invalid bytes in the middle become replacement characters.
	c = newCapBuffer(100)
	c.Write([]byte{'a', 0xff, 'b'})
	if got := c.text(); got != "a\uFFFDb" || !utf8.ValidString(got) {
		t.Fatalf("invalid bytes: %q", got)
	}
}

func TestRunResultShape(t *testing.T) {
	out, errb := newCapBuffer(8), newCapBuffer(8)
	out.Write([]byte("0123456789abcdef"))
	errb.Write([]byte("oops\n"))
	r := RunResult{Sandbox: "mcp-x", SandboxID: "id", ExitCode: 2, DurationMS: 1500, AuditID: "7:abc"}
	shapeRun(&r, out, errb)
	if r.Stdout != "01234567" || !r.StdoutTruncated || r.StdoutBytes != 16 || r.StderrTruncated || r.Stderr != "oops\n" || r.OutputCapBytes != 8 {
		t.Fatalf("shaped: %+v", r)
	}
	text := r.Text()
	for _, want := range []string{"exit_code=2", "1.5s", "sandbox mcp-x", "audit id: 7:abc", "--- stdout (16 bytes) ---\n01234567\n",
		"[stdout truncated: the first 8 of 16 bytes are shown; the cap is 8 bytes per stream]", "--- stderr (5 bytes) ---\noops\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "stderr truncated") {
		t.Errorf("stderr is not truncated:\n%s", text)
	}

	to := RunResult{Sandbox: "mcp-run-1", Transient: true, TimedOut: true, ExitCode: 124, DurationMS: 2000, BootMS: 2500}
	shapeRun(&to, newCapBuffer(8), newCapBuffer(8))
	text = to.Text()
	for _, want := range []string{"timed out after 2s", "exit_code=124", "transient sandbox mcp-run-1 (destroyed)", "sandbox start took 2.5s", "stdout: (empty)"} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
}

func TestDecodeBase64(t *testing.T) {
	for _, in := range []string{"AAEC/w==", "AAEC/w", "AAEC_w==", "AAEC_w"} {
		b, err := decodeBase64(in)
		if err != nil || string(b) != "\x00\x01\x02\xff" {
			t.Errorf("%q: %v %v", in, b, err)
		}
	}
	if _, err := decodeBase64("not base64!"); err == nil || !strings.Contains(err.Error(), "content_base64") {
		t.Errorf("invalid: %v", err)
	}
}

func TestCheckTemplate(t *testing.T) {
	// A resolver that knows every name: what looks like a path is refused
	// before it is asked.
	s := &Server{resolveImage: func(string) (int, error) { return 0, nil }}
	for _, ok := range []string{"", "minimal", "python", "python-3.11", "my-app", "sha256:abcdef"} {
		if _, err := s.checkImage(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"/home/me/app", "./app", "../x", "~/app", "a/b", `a\b`, ".", "x\x00"} {
		if _, err := s.checkImage(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	// Without a resolver only the default is accepted.
	if _, err := (&Server{}).checkImage("python"); err == nil {
		t.Error("a name was accepted with no resolver")
	}
}

func TestCheckNetwork(t *testing.T) {
	cfg, prof, err := checkNetwork(nil)
	if err != nil || cfg.HasNIC() || prof != Profile {
		t.Fatalf("no allowlist: %+v %s %v", cfg, prof, err)
	}
	cfg, prof, err = checkNetwork([]string{"example.com", "pypi.org:443"})
	if err != nil || !cfg.HasNIC() || prof != plan.Standard || len(cfg.Allow) != 2 || cfg.Allow[0].Port != 443 {
		t.Fatalf("valid allowlist: %+v %s %v", cfg, prof, err)
	}
	for _, bad := range []string{"not a host!", "example.com:0", "169.254.169.254", "host.mvm.internal:8080"} {
		_, _, err := checkNetwork([]string{bad})
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("allow %q: %v", bad, err)
		}
		// A model has no command line: no flag names in what it is told.
		if err != nil && strings.Contains(err.Error(), "--") {
			t.Errorf("allow %q: the refusal names a CLI flag: %v", bad, err)
		}
	}
}
