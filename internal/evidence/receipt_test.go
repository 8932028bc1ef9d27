package evidence

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func sampleRun() RunRecord {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	return RunRecord{
		SandboxID:    "sb-123",
		ImageDigest:  "sha256:" + strings.Repeat("a1", 32),
		OCIDigest:    "sha256:" + strings.Repeat("e5", 32),
		KernelDigest: strings.Repeat("b2", 32),
		PlanHash:     strings.Repeat("c3", 32),
		Backend:      "qemu",
		Mounts: []MountRecord{{Kind: MountHostDir, Source: "/srv/proj", GuestPath: "/work", ReadOnly: true, Origin: "manifest"},
			{Kind: MountVolume, Source: "cache", GuestPath: "/cache"}},
		Argv:       []string{"python3", "-c", "print(1)"},
		Env:        map[string]string{"B": "2", "A": "1"},
		Stdin:      DigestBytes(nil),
		Stdout:     DigestBytes([]byte("1\n")),
		Stderr:     DigestBytes(nil),
		ExitCode:   3,
		StartedAt:  t0,
		FinishedAt: t0.Add(1500 * time.Millisecond),
	}
}

func buildSample(t *testing.T) ([]byte, *Signer) {
	t.Helper()
	s := GenerateSigner("host:test-box")
	b, _, err := BuildReceipt(sampleRun(), strings.Repeat("d4", 32), s)
	if err != nil {
		t.Fatal(err)
	}
	return b, s
}

func TestReceiptVerifies(t *testing.T) {
	b, s := buildSample(t)
	rep, err := VerifyReceipt(b, AnyKey)
	if err != nil || !rep.OK {
		t.Fatalf("%v %+v", err, rep)
	}
	var names []string
	for _, c := range rep.Checks {
		names = append(names, c.Name)
	}
	want := []string{CheckSize, CheckParse, CheckCanonical, CheckSchema, CheckKeyFingerprint, CheckTrustedKey, CheckSignature}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("checks %v, want %v", names, want)
	}
	if !rep.Checks[5].Skipped {
		t.Fatal("trusted_key should be skipped with AnyKey")
	}
	rep, err = VerifyReceipt(b, TrustKeys(s.Public))
	if err != nil || !rep.OK || rep.Checks[5].Skipped {
		t.Fatalf("with key: %v", err)
	}
	p := rep.Payload
	if p.ArgvLen != 3 || p.ArgvSHA256 != ArgvSHA256([]string{"python3", "-c", "print(1)"}) ||
		!reflect.DeepEqual(p.EnvKeys, []string{"A", "B"}) || p.StdoutBytes != 2 || p.ExitCode != 3 ||
		p.StartedAt != "2025-03-01T12:00:00.123Z" || p.FinishedAt != "2025-03-01T12:00:01.623Z" ||
		p.SignerID != "host:test-box" || p.PublicKeySHA256 != s.Fingerprint() {
		t.Fatalf("payload %+v", p)
	}
	// argv hash is over the JSON array encoding.
	if ArgvSHA256([]string{"a", "b"}) != SHA256Hex([]byte(`["a","b"]`)) {
		t.Fatal("argv hash is not sha256 of the JSON array")
	}
}

func TestReceiptWrongKey(t *testing.T) {
	b, _ := buildSample(t)
	other := GenerateSigner("host:other")
	rep, err := VerifyReceipt(b, TrustKeys(other.Public))
	var re *ReceiptError
	if !errors.As(err, &re) || re.Check != CheckTrustedKey || rep.OK || rep.Failed != CheckTrustedKey {
		t.Fatalf("wrong key: %v", err)
	}
	last := rep.Checks[len(rep.Checks)-1]
	if last.Name != CheckTrustedKey || last.OK {
		t.Fatalf("last check %+v", last)
	}
}

// envelope helpers for tampering at the JSON level.
func decodeEnvelope(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := decodeStrict(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func encodeEnvelope(t *testing.T, m map[string]any) []byte {
	t.Helper()
	out, err := Canonical(m)
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

func mutateValue(v any) any {
	switch x := v.(type) {
	case string:
		if x == "" {
			return "x"
		}
		r := []byte(x)
		if r[len(r)-1] == '0' {
			r[len(r)-1] = '1'
		} else {
			r[len(r)-1] = '0'
		}
		return string(r)
	case json.Number:
		n, _ := x.Int64()
		return json.Number(strconv.FormatInt(n+1, 10))
	case []any:
		return append(append([]any{}, x...), "ZZZ")
	case bool:
		return !x
	default:
		panic("unhandled type")
	}
}

func TestReceiptEveryPayloadFieldIsProtected(t *testing.T) {
	b, s := buildSample(t)
	payload := decodeEnvelope(t, b)["payload"].(map[string]any)
	if n := reflect.TypeOf(ReceiptPayload{}).NumField(); len(payload) != n {
		t.Fatalf("payload has %d fields, struct %d", len(payload), n)
	}
	for key := range payload {
		for _, trust := range []Trust{AnyKey, TrustKeys(s.Public)} {
			m := decodeEnvelope(t, b)
			p := m["payload"].(map[string]any)
			p[key] = mutateValue(p[key])
			tampered := encodeEnvelope(t, m)
			if rep, err := VerifyReceipt(tampered, trust); err == nil || rep.OK {
				t.Errorf("changing %s went undetected (any key: %v)", key, trust.AnyKey)
			}
			// Removing it is detected too.
			m = decodeEnvelope(t, b)
			delete(m["payload"].(map[string]any), key)
			if _, err := VerifyReceipt(encodeEnvelope(t, m), trust); err == nil {
				t.Errorf("removing %s went undetected", key)
			}
		}
	}
	// Adding a field is refused at parse.
	m := decodeEnvelope(t, b)
	m["payload"].(map[string]any)["note"] = "x"
	if _, err := VerifyReceipt(encodeEnvelope(t, m), AnyKey); err == nil {
		t.Error("extra field accepted")
	}
	// Swapping in another receipt's signature fails the signature check.
	b2, _, _ := BuildReceipt(sampleRun(), strings.Repeat("e5", 32), s)
	m = decodeEnvelope(t, b)
	m["signature"] = decodeEnvelope(t, b2)["signature"]
	_, err := VerifyReceipt(encodeEnvelope(t, m), TrustKeys(s.Public))
	var re *ReceiptError
	if !errors.As(err, &re) || re.Check != CheckSignature {
		t.Fatalf("swapped signature: %v", err)
	}
}

func TestReceiptEveryByteIsProtected(t *testing.T) {
	b, s := buildSample(t)
	for i := range b {
		for _, mask := range []byte{0x01, 0x20, 0x80} {
			c := append([]byte{}, b...)
			c[i] ^= mask
			if rep, err := VerifyReceipt(c, AnyKey); err == nil || rep.OK {
				t.Fatalf("flipping byte %d (%q) with %#x went undetected", i, b[i], mask)
			}
		}
	}
	// Truncation and extension too.
	for _, c := range [][]byte{b[:len(b)-2], append(append([]byte{}, b...), ' '), append(append([]byte{}, b...), '\n')} {
		if _, err := VerifyReceipt(c, TrustKeys(s.Public)); err == nil {
			t.Fatalf("altered length accepted")
		}
	}
	// Without the trailing newline it is still the same receipt.
	if _, err := VerifyReceipt(b[:len(b)-1], TrustKeys(s.Public)); err != nil {
		t.Fatal(err)
	}
}

func TestReceiptSchemaVersionRefused(t *testing.T) {
	b, _ := buildSample(t)
	m := decodeEnvelope(t, b)
	m["payload"].(map[string]any)["schema_version"] = 3
	_, err := VerifyReceipt(encodeEnvelope(t, m), AnyKey)
	var re *ReceiptError
	if !errors.As(err, &re) || re.Check != CheckSchema {
		t.Fatalf("%v", err)
	}
	// A version 1 receipt carries no backend; a version 2 one must.
	m = decodeEnvelope(t, b)
	m["payload"].(map[string]any)["schema_version"] = 1
	if _, err := VerifyReceipt(encodeEnvelope(t, m), AnyKey); !errors.As(err, &re) || re.Check != CheckSchema {
		t.Fatalf("v1 with backend: %v", err)
	}
	delete(m["payload"].(map[string]any), "backend")
	if _, err := VerifyReceipt(encodeEnvelope(t, m), AnyKey); !errors.As(err, &re) || re.Check != CheckSignature {
		t.Fatalf("v1 without backend should reach the signature check: %v", err)
	}
}

// TestReceiptRecordsBackend is issue 17: the backend is in the receipt and
// in the exec.finished entry.
func TestReceiptRecordsBackend(t *testing.T) {
	b, _ := buildSample(t)
	rep, err := VerifyReceipt(b, AnyKey)
	if err != nil || rep.Payload.Backend != "qemu" || rep.Payload.SchemaVersion != 2 {
		t.Fatalf("%v %+v", err, rep.Payload)
	}
	r := sampleRun()
	if r.AuditFields()["backend"] != "qemu" {
		t.Fatal("exec.finished has no backend")
	}
	r.Backend = ""
	if _, _, err := BuildReceipt(r, strings.Repeat("d4", 32), GenerateSigner("host:x")); err == nil {
		t.Fatal("receipt without a backend built")
	}
}

func TestRecordRunLinksChain(t *testing.T) {
	c, s, dir := newTestChain(t)
	b, rec, err := RecordRun(c, s, sampleRun())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyReceipt(b, TrustKeys(s.Public))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Payload.AuditEntrySHA256 != rec.Hash || rec.Entry.Fields["receipt_id"] != rep.Payload.ReceiptID {
		t.Fatal("receipt and audit entry do not name each other")
	}
	got, err := CheckReceiptInChain(rep.Payload, ChainPath(dir))
	if err != nil || got.Entry.Seq != 1 {
		t.Fatalf("CheckReceiptInChain: %v", err)
	}
	path := filepath.Join(t.TempDir(), "r.json")
	os.WriteFile(path, b, 0o644)
}

func TestRecordRunManyEnvKeys(t *testing.T) {
	c, s, _ := newTestChain(t)
	r := sampleRun()
	r.Env = map[string]string{}
	for i := 0; i < 100; i++ {
		r.Env["K"+strconv.Itoa(i)] = "v"
	}
	b, rec, err := RecordRun(c, s, r)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Entry.Fields["env_key_count"] == nil {
		t.Fatal("env_key_count missing")
	}
	rep, err := VerifyReceipt(b, TrustKeys(s.Public))
	if err != nil || len(rep.Payload.EnvKeys) != 100 {
		t.Fatal(err)
	}
}

// TestReceiptVerifyForgedReceiptRefused is issue 11 item 7: a receipt signed
// by a fresh key that names any signer must not verify unless the caller
// asked for the self-contained check.
func TestReceiptVerifyForgedReceiptRefused(t *testing.T) {
	b, _ := buildSample(t) // signed by its own fresh key
	host := GenerateSigner("host:real")
	rep, err := VerifyReceipt(b, TrustKeys(host.Public))
	var re *ReceiptError
	if !errors.As(err, &re) || re.Check != CheckTrustedKey || rep.OK {
		t.Fatalf("forged receipt against the host key: %v %+v", err, rep)
	}
	rep, err = VerifyReceipt(b, Trust{})
	if !errors.As(err, &re) || re.Check != CheckTrustedKey || !strings.Contains(err.Error(), "no trusted key") {
		t.Fatalf("no trusted key: %v %+v", err, rep)
	}
	// Any one of several trusted keys will do.
	b2, s2 := buildSample(t)
	if rep, err := VerifyReceipt(b2, TrustKeys(host.Public, s2.Public)); err != nil || !rep.OK {
		t.Fatalf("second trusted key: %v", err)
	}
}

// The mounts a receipt lists are checked like every other field: a kind
// it does not know, a control character or a relative guest path is
// refused.
func TestReceiptMountsChecked(t *testing.T) {
	s := GenerateSigner("host:test")
	for _, bad := range []MountRecord{
		{Kind: "bind", Source: "/x", GuestPath: "/x"},
		{Kind: MountHostDir, Source: "/x\x1b]0;t", GuestPath: "/x"},
		{Kind: MountHostDir, Source: "/x", GuestPath: "x"},
		{Kind: MountVolume, Source: "", GuestPath: "/x"},
	} {
		r := sampleRun()
		r.Mounts = []MountRecord{bad}
		b, _, err := BuildReceipt(r, strings.Repeat("e5", 32), s)
		if err == nil {
			if _, err = VerifyReceipt(b, AnyKey); err == nil {
				t.Errorf("%+v accepted", bad)
			}
		}
	}
}
