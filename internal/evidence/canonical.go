// Package evidence implements mvm's evidence format: the host Ed25519
// signing key, RFC 8785 canonical JSON, signed run receipts and the
// append-only, hash-chained, signed audit log.
//
// Redaction rule: evidence never holds data-plane bytes (argv values, env
// values, stdin/stdout/stderr bytes, file contents). It holds only hashes,
// byte counts, ids and policy tags. The API enforces this where it can:
// receipts take argv and output digests and hash them here, audit fields
// accept only small scalar values under keys that do not name data-plane
// streams, and RedactInvocation turns an invocation into its evidence form.
package evidence

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/gowebpki/jcs"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// Canonical returns the RFC 8785 (JCS) canonical JSON encoding of v.
func Canonical(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return CanonicalizeJSON(raw)
}

// CanonicalizeJSON re-encodes JSON text in RFC 8785 canonical form. It
// rejects malformed JSON and duplicate object keys.
func CanonicalizeJSON(raw []byte) ([]byte, error) {
	out, err := jcs.Transform(raw)
	if err != nil {
		return nil, fmt.Errorf("canonical json: %w", err)
	}
	return out, nil
}

// SHA256Hex returns the lowercase hex SHA-256 of b.
func SHA256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// ZeroHash is the prev value of the first audit entry.
const ZeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

var hex64 = lazyre.New(`^[0-9a-f]{64}$`)

// IsHex64 reports whether s is a lowercase hex SHA-256 digest.
func IsHex64(s string) bool { return hex64.MatchString(s) }

// TimeFormat is the timestamp format used in all evidence: RFC 3339, UTC,
// millisecond precision.
const TimeFormat = "2006-01-02T15:04:05.000Z"

// FormatTime formats t as an evidence timestamp.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeFormat) }

// ParseTime parses an evidence timestamp and insists it is in the exact
// form FormatTime produces.
func ParseTime(s string) (time.Time, error) {
	t, err := time.Parse(TimeFormat, s)
	if err != nil {
		return time.Time{}, err
	}
	if FormatTime(t) != s {
		return time.Time{}, fmt.Errorf("timestamp %q is not in canonical form %s", s, TimeFormat)
	}
	return t, nil
}

// NewID returns a random RFC 4122 version 4 UUID.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("evidence: crypto/rand failed: " + err.Error())
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

var uuidRe = lazyre.New(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// IsID reports whether s is a lowercase UUID v4 as NewID makes.
func IsID(s string) bool { return uuidRe.MatchString(s) }

// decodeStrict decodes exactly one JSON value into v, refusing unknown
// fields and trailing data, and keeping numbers as json.Number.
func decodeStrict(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}

// DecodeStrict is decodeStrict for other packages of this module (plan).
func DecodeStrict(raw []byte, v any) error { return decodeStrict(raw, v) }

var digestRe = lazyre.New(`^([a-z0-9]+:)?[0-9a-f]{64,128}$`)

// IsDigest reports whether s is a content digest: lowercase hex of 64-128
// digits, optionally prefixed by an algorithm ("sha256:...").
func IsDigest(s string) bool { return digestRe.MatchString(s) }
