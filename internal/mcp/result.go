package mcp

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"google.golang.org/grpc/status"
)

// capBuffer keeps the first limit bytes written to it and counts the rest.
type capBuffer struct {
	buf   []byte
	limit int
	total int64
}

func newCapBuffer(limit int) *capBuffer { return &capBuffer{limit: limit} }

func (c *capBuffer) Write(p []byte) (int, error) {
	c.total += int64(len(p))
	if room := c.limit - len(c.buf); room > 0 {
		c.buf = append(c.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *capBuffer) truncated() bool { return c.total > int64(len(c.buf)) }

// text is the kept bytes as UTF-8: a rune cut by the cap is dropped, and
// invalid bytes become U+FFFD.
func (c *capBuffer) text() string { return toText(c.buf, c.truncated()) }

// toText renders bytes for a model. When cut, an incomplete final rune is
// trimmed rather than turned into a replacement character.
func toText(b []byte, cut bool) string {
	if cut {
		b = trimPartialRune(b)
	}
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// trimPartialRune drops a UTF-8 sequence cut off at the end of b.
func trimPartialRune(b []byte) []byte {
	for i := 1; i <= utf8.UTFMax && i <= len(b); i++ {
		c := b[len(b)-i]
		if c < utf8.RuneSelf { // ASCII: nothing cut
			return b
		}
		if utf8.RuneStart(c) {
			if r, size := utf8.DecodeRune(b[len(b)-i:]); r == utf8.RuneError && size <= 1 {
				return b[:len(b)-i] // incomplete sequence
			}
			return b
		}
	}
	return b
}

// RunResult is the structured result of run_command and run_code.
type RunResult struct {
	// Sandbox is the handle the command ran in; for a transient run, the
	// name of the sandbox that was created and destroyed for it.
	Sandbox   string `json:"sandbox"`
	SandboxID string `json:"sandbox_id"`
	Transient bool   `json:"transient" jsonschema:"true when the sandbox was created for this call and destroyed after it"`
	// ExitCode is the command's exit status; 124 when it timed out, 128+N
	// when a signal N ended it.
	ExitCode        int    `json:"exit_code"`
	Signal          int    `json:"signal,omitempty"`
	TimedOut        bool   `json:"timed_out"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutBytes     int64  `json:"stdout_bytes" jsonschema:"bytes the command wrote to stdout, including any not returned"`
	StderrBytes     int64  `json:"stderr_bytes" jsonschema:"bytes the command wrote to stderr, including any not returned"`
	StdoutTruncated bool   `json:"stdout_truncated" jsonschema:"stdout was longer than the per-stream cap and only its beginning is returned"`
	StderrTruncated bool   `json:"stderr_truncated" jsonschema:"stderr was longer than the per-stream cap and only its beginning is returned"`
	OutputCapBytes  int    `json:"output_cap_bytes"`
	DurationMS      int64  `json:"duration_ms" jsonschema:"time the command ran, in milliseconds"`
	BootMS          int64  `json:"boot_ms,omitempty" jsonschema:"time to boot the transient sandbox, in milliseconds"`
	AuditID         string `json:"audit_id,omitempty" jsonschema:"the audit chain entry of this run (mvmctl audit show ID)"`
	// Receipt is the run's signed receipt (canonical JSON; verifiable
	// offline with mvmctl receipt verify). It holds hashes and counts,
	// never argv, stdin or output.
	Receipt json.RawMessage `json:"receipt,omitempty" jsonschema:"the signed run receipt"`
}

// shapeRun fills the output part of a result from the captured streams.
func shapeRun(r *RunResult, out, errb *capBuffer) {
	r.Stdout, r.Stderr = out.text(), errb.text()
	r.StdoutBytes, r.StderrBytes = out.total, errb.total
	r.StdoutTruncated, r.StderrTruncated = out.truncated(), errb.truncated()
	r.OutputCapBytes = out.limit
}

// Text renders a run result for a reader: status line, then each stream,
// with truncation said in words.
func (r *RunResult) Text() string {
	var b strings.Builder
	where := "sandbox " + r.Sandbox
	if r.Transient {
		where = "transient sandbox " + r.Sandbox + " (destroyed)"
	}
	switch {
	case r.TimedOut:
		fmt.Fprintf(&b, "timed out after %s and was killed (exit_code=%d) in %s\n", ms(r.DurationMS), r.ExitCode, where)
	case r.Signal != 0:
		fmt.Fprintf(&b, "killed by signal %d (exit_code=%d) after %s in %s\n", r.Signal, r.ExitCode, ms(r.DurationMS), where)
	default:
		fmt.Fprintf(&b, "exit_code=%d after %s in %s\n", r.ExitCode, ms(r.DurationMS), where)
	}
	if r.BootMS > 0 {
		fmt.Fprintf(&b, "sandbox start took %s (boot, and the image build on first use)\n", ms(r.BootMS))
	}
	if r.AuditID != "" {
		fmt.Fprintf(&b, "audit id: %s\n", r.AuditID)
	}
	stream := func(name, s string, n int64, cut bool) {
		if n == 0 {
			fmt.Fprintf(&b, "--- %s: (empty)\n", name)
			return
		}
		fmt.Fprintf(&b, "--- %s (%d bytes) ---\n%s", name, n, s)
		if !strings.HasSuffix(s, "\n") {
			b.WriteString("\n")
		}
		if cut {
			fmt.Fprintf(&b, "[%s truncated: the first %d of %d bytes are shown; the cap is %d bytes per stream]\n",
				name, len(s), n, r.OutputCapBytes)
		}
	}
	stream("stdout", r.Stdout, r.StdoutBytes, r.StdoutTruncated)
	stream("stderr", r.Stderr, r.StderrBytes, r.StderrTruncated)
	return b.String()
}

func ms(n int64) string { return (time.Duration(n) * time.Millisecond).String() }

// decodeBase64 accepts standard or URL-safe base64, padded or not.
func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	var firstErr error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		b, err := enc.DecodeString(s)
		if err == nil {
			return b, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, fmt.Errorf("content_base64 is not valid base64: %v", firstErr)
}

// describe is the human part of an error, without gRPC framing.
func describe(err error) string {
	if err == nil {
		return ""
	}
	if _, ok := status.FromError(err); ok {
		return agentapi.Message(err)
	}
	var fe *agentapi.FsError
	if errors.As(err, &fe) {
		return fe.Error()
	}
	return err.Error()
}

// Duration is a tool argument given as a number of seconds or as a
// duration string ("90s", "10m", "1h").
type Duration time.Duration

// UnmarshalJSON accepts a number of seconds or a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case nil:
		*d = 0
	case float64:
		if x < 0 || x > float64(maxSessionLimit/time.Second)*10 {
			return fmt.Errorf("duration %v seconds is out of range", x)
		}
		*d = Duration(time.Duration(x * float64(time.Second)))
	case string:
		p, err := ParseDuration(x)
		if err != nil {
			return fmt.Errorf("duration %q: %v", x, err)
		}
		if p < 0 {
			return fmt.Errorf("duration %q must not be negative", x)
		}
		*d = Duration(p)
	default:
		return fmt.Errorf("a duration is a number of seconds or a string like \"90s\"")
	}
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// D is the duration as time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func encodeBase64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
