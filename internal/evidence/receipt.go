package evidence

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// ReceiptSchemaVersion is the receipt schema this build writes. Version 2
// added backend; version 1 receipts (without it) still verify.
const ReceiptSchemaVersion = 2

// MaxReceiptBytes bounds the receipt files VerifyReceipt accepts.
const MaxReceiptBytes = 64 << 10

// Digest is the evidence form of a byte stream: its SHA-256 and length.
type Digest struct {
	SHA256 string `json:"sha256"`
	Bytes  int64  `json:"bytes"`
}

// DigestBytes digests b.
func DigestBytes(b []byte) Digest {
	return Digest{SHA256: SHA256Hex(b), Bytes: int64(len(b))}
}

// Hasher is an io.Writer that digests a stream as it passes, e.g.
// io.Copy(io.MultiWriter(dst, h), src); h.Digest().
type Hasher struct {
	h hash.Hash
	n int64
}

// NewHasher returns an empty Hasher.
func NewHasher() *Hasher { return &Hasher{h: sha256.New()} }

func (h *Hasher) Write(p []byte) (int, error) {
	h.h.Write(p)
	h.n += int64(len(p))
	return len(p), nil
}

// Digest returns the digest of everything written so far.
func (h *Hasher) Digest() Digest {
	return Digest{SHA256: hex.EncodeToString(h.h.Sum(nil)), Bytes: h.n}
}

// RedactedInvocation is the evidence form of a command invocation: a hash
// and count of argv and the sorted env key names. No values.
type RedactedInvocation struct {
	ArgvSHA256 string   `json:"argv_sha256"`
	ArgvLen    int      `json:"argv_len"`
	EnvKeys    []string `json:"env_keys"`
}

// ArgvSHA256 is the sha256 hex of the RFC 8785 encoding of argv as a JSON
// array of strings (e.g. ["echo","hi"]).
func ArgvSHA256(argv []string) string {
	if argv == nil {
		argv = []string{}
	}
	b, err := Canonical(argv)
	if err != nil {
		panic("evidence: canonical argv: " + err.Error()) // []string always encodes
	}
	return SHA256Hex(b)
}

// SortedKeys returns the sorted key names of env; the values are dropped.
func SortedKeys(env map[string]string) []string {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// RedactInvocation reduces an invocation to what evidence may hold.
func RedactInvocation(argv []string, env map[string]string) RedactedInvocation {
	return RedactedInvocation{ArgvSHA256: ArgvSHA256(argv), ArgvLen: len(argv), EnvKeys: SortedKeys(env)}
}

// Fields returns r as audit entry fields.
func (r RedactedInvocation) Fields() map[string]any {
	return map[string]any{"argv_sha256": r.ArgvSHA256, "argv_len": r.ArgvLen, "env_keys": r.EnvKeys}
}

// RunRecord describes one finished execution. Argv and Env are taken raw
// and reduced here (hash + count, key names); stdio arrives already
// digested (use a Hasher while streaming). Nothing else is retained.
type RunRecord struct {
	ReceiptID    string // optional; a UUID is generated when empty
	SandboxID    string
	ImageDigest  string
	KernelDigest string
	PlanHash     string // plan.SignedPlan hash (sha256 of its canonical bytes)
	Backend      string // the VMM that ran it: qemu or firecracker

	// WorkloadIRHash is the Workload IR hash of a sandbox booted from a
	// declaration ("" otherwise).
	WorkloadIRHash string
	// OCIDigest is the OCI manifest digest behind the image ("" for none).
	OCIDigest string
	// Mounts are the sandbox's host directories and volumes, as its plan
	// admitted them.
	Mounts []MountRecord

	Argv       []string
	Env        map[string]string // values are never stored
	Stdin      Digest
	Stdout     Digest
	Stderr     Digest
	ExitCode   int
	StartedAt  time.Time
	FinishedAt time.Time
}

// MountRecord is a host directory or volume a run's sandbox had: what
// the host shared (a path or a volume name, never file contents), where
// and how.
type MountRecord struct {
	Kind      string `json:"kind"`   // MountHostDir or MountVolume
	Source    string `json:"source"` // the host path, or the volume's name
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only"`
	// Origin is "manifest" for a mount an image manifest asked for (and
	// the operator granted); "" is the operator's own.
	Origin string `json:"origin,omitempty"`
}

// Kinds of MountRecord.
const (
	MountHostDir = "host_dir"
	MountVolume  = "volume"
	// maxMountRecords and maxMountPath bound what a receipt may list.
	maxMountRecords = 64
	maxMountPath    = 4096
)

// ReceiptPayload is the signed part of a receipt.
type ReceiptPayload struct {
	SchemaVersion    int    `json:"schema_version"`
	ReceiptID        string `json:"receipt_id"`
	SandboxID        string `json:"sandbox_id"`
	ImageDigest      string `json:"image_digest"`
	KernelDigest     string `json:"kernel_digest"`
	PlanSHA256       string `json:"plan_sha256"`
	Backend          string `json:"backend,omitempty"`    // schema 2 on
	WorkloadIRSHA256 string `json:"workload_ir_sha256"`   // "" unless booted from a declaration
	OCIDigest        string `json:"oci_digest,omitempty"` // the OCI manifest digest behind the image, if any
	// Mounts: the sandbox's host directories and volumes (omitted when
	// it had none).
	Mounts           []MountRecord `json:"mounts,omitempty"`
	ArgvSHA256       string        `json:"argv_sha256"`
	ArgvLen          int           `json:"argv_len"`
	EnvKeys          []string      `json:"env_keys"`
	StdinSHA256      string        `json:"stdin_sha256"`
	StdinBytes       int64         `json:"stdin_bytes"`
	StdoutSHA256     string        `json:"stdout_sha256"`
	StdoutBytes      int64         `json:"stdout_bytes"`
	StderrSHA256     string        `json:"stderr_sha256"`
	StderrBytes      int64         `json:"stderr_bytes"`
	ExitCode         int           `json:"exit_code"`
	StartedAt        string        `json:"started_at"`
	FinishedAt       string        `json:"finished_at"`
	SignerID         string        `json:"signer_id"`
	PublicKeySHA256  string        `json:"public_key_sha256"`
	PublicKey        string        `json:"public_key"`
	AuditEntrySHA256 string        `json:"audit_entry_sha256"`
}

// Receipt is the on-disk receipt: {"payload":{...},"signature":"<base64>"},
// written as its RFC 8785 canonical bytes plus "\n". The signature is
// Ed25519 over DomainReceipt || JCS(payload).
type Receipt struct {
	Payload   ReceiptPayload `json:"payload"`
	Signature string         `json:"signature"`
}

func (r *RunRecord) fill() {
	if r.ReceiptID == "" {
		r.ReceiptID = NewID()
	}
	for _, d := range []*Digest{&r.Stdin, &r.Stdout, &r.Stderr} {
		if d.SHA256 == "" && d.Bytes == 0 {
			*d = DigestBytes(nil) // a stream that was never written is empty
		}
	}
}

// AuditFields returns the redacted fields for the exec.finished audit entry
// of this run (it names the receipt id). It fills ReceiptID if empty.
func (r *RunRecord) AuditFields() map[string]any {
	r.fill()
	inv := RedactInvocation(r.Argv, r.Env)
	f := inv.Fields()
	f["env_key_count"] = len(inv.EnvKeys)
	if len(inv.EnvKeys) > MaxFieldListItems {
		delete(f, "env_keys") // too many to list; the receipt has them all
	}
	f["receipt_id"] = r.ReceiptID
	f["plan_sha256"] = r.PlanHash
	f["backend"] = r.Backend
	if r.WorkloadIRHash != "" {
		f["workload_ir_sha256"] = r.WorkloadIRHash
	}
	f["exit_code"] = r.ExitCode
	f["stdin_sha256"], f["stdin_bytes"] = r.Stdin.SHA256, r.Stdin.Bytes
	f["stdout_sha256"], f["stdout_bytes"] = r.Stdout.SHA256, r.Stdout.Bytes
	f["stderr_sha256"], f["stderr_bytes"] = r.Stderr.SHA256, r.Stderr.Bytes
	return f
}

// BuildReceipt makes and signs the receipt of run r, naming the audit entry
// whose hash is auditEntryHash. It returns the file bytes and the receipt.
func BuildReceipt(r RunRecord, auditEntryHash string, s *Signer) ([]byte, *Receipt, error) {
	r.fill()
	inv := RedactInvocation(r.Argv, r.Env)
	p := ReceiptPayload{
		SchemaVersion:    ReceiptSchemaVersion,
		ReceiptID:        r.ReceiptID,
		SandboxID:        r.SandboxID,
		ImageDigest:      r.ImageDigest,
		KernelDigest:     r.KernelDigest,
		PlanSHA256:       r.PlanHash,
		Backend:          r.Backend,
		WorkloadIRSHA256: r.WorkloadIRHash,
		OCIDigest:        r.OCIDigest,
		Mounts:           r.Mounts,
		ArgvSHA256:       inv.ArgvSHA256,
		ArgvLen:          inv.ArgvLen,
		EnvKeys:          inv.EnvKeys,
		StdinSHA256:      r.Stdin.SHA256,
		StdinBytes:       r.Stdin.Bytes,
		StdoutSHA256:     r.Stdout.SHA256,
		StdoutBytes:      r.Stdout.Bytes,
		StderrSHA256:     r.Stderr.SHA256,
		StderrBytes:      r.Stderr.Bytes,
		ExitCode:         r.ExitCode,
		StartedAt:        FormatTime(r.StartedAt),
		FinishedAt:       FormatTime(r.FinishedAt),
		SignerID:         s.ID,
		PublicKeySHA256:  s.Fingerprint(),
		PublicKey:        base64.StdEncoding.EncodeToString(s.Public),
		AuditEntrySHA256: auditEntryHash,
	}
	if err := checkPayload(&p); err != nil {
		return nil, nil, fmt.Errorf("receipt: %w", err)
	}
	pb, err := Canonical(p)
	if err != nil {
		return nil, nil, err
	}
	rc := &Receipt{Payload: p, Signature: base64.StdEncoding.EncodeToString(s.Sign(DomainReceipt, pb))}
	out, err := Canonical(rc)
	if err != nil {
		return nil, nil, err
	}
	if len(out)+1 > MaxReceiptBytes {
		return nil, nil, fmt.Errorf("receipt: %d bytes exceeds %d", len(out)+1, MaxReceiptBytes)
	}
	return append(out, '\n'), rc, nil
}

// RecordRun appends the exec.finished entry for r to chain and returns the
// signed receipt that names it. This is the one call a runtime needs after
// an execution finishes.
func RecordRun(chain *Chain, s *Signer, r RunRecord) ([]byte, Record, error) {
	r.fill()
	rec, err := chain.Append(KindExecFinished, r.SandboxID, r.AuditFields())
	if err != nil {
		return nil, Record{}, err
	}
	b, _, err := BuildReceipt(r, rec.Hash, s)
	if err != nil {
		return nil, rec, err
	}
	return b, rec, nil
}

// Receipt check names, in the order VerifyReceipt runs them.
const (
	CheckSize           = "size"
	CheckParse          = "parse"
	CheckCanonical      = "canonical"
	CheckSchema         = "schema"
	CheckKeyFingerprint = "key_fingerprint"
	CheckTrustedKey     = "trusted_key"
	CheckSignature      = "signature"
)

// Check is one step of receipt verification.
type Check struct {
	Name    string `json:"name"`
	OK      bool   `json:"ok"`
	Skipped bool   `json:"skipped,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

// ReceiptReport lists the checks VerifyReceipt performed. On failure the
// last check is the failed one and no later check was run.
type ReceiptReport struct {
	OK      bool            `json:"ok"`
	Checks  []Check         `json:"checks"`
	Failed  string          `json:"failed,omitempty"`
	Payload *ReceiptPayload `json:"payload,omitempty"`
}

// ReceiptError names the first failed check.
type ReceiptError struct {
	Check  string
	Reason string
}

func (e *ReceiptError) Error() string {
	return fmt.Sprintf("receipt %s check failed: %s", e.Check, e.Reason)
}

// Trust says which keys a receipt may be signed by. The zero value trusts
// no key, so verification fails at the trusted_key check: origin is never
// assumed.
type Trust struct {
	// Keys are the trusted public keys; the receipt's embedded key must be
	// one of them.
	Keys []ed25519.PublicKey
	// AnyKey accepts whatever key the receipt embeds: the check then proves
	// the receipt was not altered after signing, not who signed it.
	AnyKey bool
}

// TrustKeys trusts exactly keys.
func TrustKeys(keys ...ed25519.PublicKey) Trust { return Trust{Keys: keys} }

// AnyKey is the self-contained check (integrity, not origin).
var AnyKey = Trust{AnyKey: true}

// ErrNoTrustedKey is the trusted_key failure when no key was given.
var ErrNoTrustedKey = errors.New("no trusted key to verify the signer against")

// VerifyReceipt verifies a receipt file's bytes offline against trust. The
// embedded key must be one of trust.Keys (origin); with trust.AnyKey the
// embedded key is used as is and the trusted_key check is marked skipped
// (integrity only). It returns the report and, when a check failed, a
// *ReceiptError naming it.
func VerifyReceipt(data []byte, trust Trust) (*ReceiptReport, error) {
	rep := &ReceiptReport{}
	pass := func(name, detail string) {
		rep.Checks = append(rep.Checks, Check{Name: name, OK: true, Detail: detail})
	}
	fail := func(name, format string, a ...any) (*ReceiptReport, error) {
		reason := fmt.Sprintf(format, a...)
		rep.Checks = append(rep.Checks, Check{Name: name, Detail: reason})
		rep.Failed = name
		return rep, &ReceiptError{Check: name, Reason: reason}
	}

	if len(data) > MaxReceiptBytes {
		return fail(CheckSize, "%d bytes exceeds %d", len(data), MaxReceiptBytes)
	}
	pass(CheckSize, fmt.Sprintf("%d bytes", len(data)))

	var rc Receipt
	if err := decodeStrict(data, &rc); err != nil {
		return fail(CheckParse, "%v", err)
	}
	pass(CheckParse, "")

	canon, err := Canonical(rc)
	if err != nil {
		return fail(CheckCanonical, "%v", err)
	}
	body := data
	if n := len(body); n > 0 && body[n-1] == '\n' {
		body = body[:n-1]
	}
	if !bytes.Equal(canon, body) {
		return fail(CheckCanonical, "file is not the RFC 8785 canonical encoding of its content (altered or re-encoded)")
	}
	pass(CheckCanonical, "RFC 8785")

	p := rc.Payload
	if p.SchemaVersion != 1 && p.SchemaVersion != ReceiptSchemaVersion {
		return fail(CheckSchema, "schema_version %d is not supported (want 1..%d)", p.SchemaVersion, ReceiptSchemaVersion)
	}
	if err := checkPayload(&p); err != nil {
		return fail(CheckSchema, "%v", err)
	}
	pass(CheckSchema, fmt.Sprintf("version %d", p.SchemaVersion))

	key, err := base64.StdEncoding.Strict().DecodeString(p.PublicKey)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return fail(CheckKeyFingerprint, "public_key is not %d bytes of base64", ed25519.PublicKeySize)
	}
	if fp := Fingerprint(key); fp != p.PublicKeySHA256 {
		return fail(CheckKeyFingerprint, "embedded public key hashes to %s, receipt says %s", short(fp), short(p.PublicKeySHA256))
	}
	pass(CheckKeyFingerprint, p.PublicKeySHA256)

	switch {
	case trust.AnyKey:
		rep.Checks = append(rep.Checks, Check{Name: CheckTrustedKey, OK: true, Skipped: true,
			Detail: "any key accepted: integrity checked against the key the receipt embeds; origin NOT established"})
	case len(trust.Keys) == 0:
		return fail(CheckTrustedKey, "%v: receipt names signer %s with key %s", ErrNoTrustedKey, p.SignerID, short(p.PublicKeySHA256))
	default:
		trusted := false
		for _, k := range trust.Keys {
			if bytes.Equal(k, key) {
				trusted = true
				break
			}
		}
		if !trusted {
			fps := make([]string, len(trust.Keys))
			for i, k := range trust.Keys {
				fps[i] = short(Fingerprint(k))
			}
			return fail(CheckTrustedKey, "receipt was signed by key %s, which is not a trusted key (%s)", short(p.PublicKeySHA256), strings.Join(fps, ", "))
		}
		pass(CheckTrustedKey, "signed by a trusted key")
	}

	sig, err := base64.StdEncoding.Strict().DecodeString(rc.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fail(CheckSignature, "signature is not %d bytes of base64", ed25519.SignatureSize)
	}
	pb, err := Canonical(p)
	if err != nil {
		return fail(CheckSignature, "%v", err)
	}
	if !Verify(key, DomainReceipt, pb, sig) {
		return fail(CheckSignature, "Ed25519 signature does not verify over the payload")
	}
	pass(CheckSignature, "Ed25519 by "+p.SignerID)

	rep.OK = true
	rep.Payload = &p
	return rep, nil
}

var (
	envKeyRe  = lazyre.New(`^[A-Za-z_][A-Za-z0-9_]*$`)
	signerRe  = lazyre.New(`^host:[A-Za-z0-9._-]{1,253}$`)
	idTextMax = 128
)

func checkPayload(p *ReceiptPayload) error {
	switch {
	case p.SchemaVersion == 1 && p.Backend != "":
		return fmt.Errorf("backend is not a schema 1 field")
	case p.SchemaVersion >= 2 && p.Backend != "qemu" && p.Backend != "firecracker":
		return fmt.Errorf("backend %q is not qemu or firecracker", p.Backend)
	}
	if !IsID(p.ReceiptID) {
		return fmt.Errorf("receipt_id %q is not a UUID v4", p.ReceiptID)
	}
	if p.SandboxID == "" || len(p.SandboxID) > idTextMax || checkFieldString(p.SandboxID) != nil {
		return fmt.Errorf("sandbox_id must be 1..%d printable bytes", idTextMax)
	}
	for name, v := range map[string]string{"image_digest": p.ImageDigest, "kernel_digest": p.KernelDigest} {
		if !IsDigest(v) {
			return fmt.Errorf("%s %q is not a digest", name, v)
		}
	}
	if p.OCIDigest != "" && !IsDigest(p.OCIDigest) {
		return fmt.Errorf("oci_digest %q is not a digest", p.OCIDigest)
	}
	if p.WorkloadIRSHA256 != "" && !IsHex64(p.WorkloadIRSHA256) {
		return fmt.Errorf("workload_ir_sha256 is not a sha256 hex digest")
	}
	for name, v := range map[string]string{
		"plan_sha256": p.PlanSHA256, "argv_sha256": p.ArgvSHA256,
		"stdin_sha256": p.StdinSHA256, "stdout_sha256": p.StdoutSHA256, "stderr_sha256": p.StderrSHA256,
		"public_key_sha256": p.PublicKeySHA256, "audit_entry_sha256": p.AuditEntrySHA256,
	} {
		if !IsHex64(v) {
			return fmt.Errorf("%s is not a sha256 hex digest", name)
		}
	}
	if p.ArgvLen < 0 || p.StdinBytes < 0 || p.StdoutBytes < 0 || p.StderrBytes < 0 {
		return fmt.Errorf("counts must not be negative")
	}
	if p.EnvKeys == nil {
		return fmt.Errorf("env_keys missing")
	}
	if len(p.Mounts) > maxMountRecords {
		return fmt.Errorf("%d mounts exceed %d", len(p.Mounts), maxMountRecords)
	}
	for i, m := range p.Mounts {
		if m.Kind != MountHostDir && m.Kind != MountVolume {
			return fmt.Errorf("mounts[%d]: kind %q is not %s or %s", i, m.Kind, MountHostDir, MountVolume)
		}
		for _, s := range []string{m.Source, m.GuestPath, m.Origin} {
			if len(s) > maxMountPath || !utf8.ValidString(s) || strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
				return fmt.Errorf("mounts[%d]: paths must be printable UTF-8 of at most %d bytes", i, maxMountPath)
			}
		}
		if m.Source == "" || !strings.HasPrefix(m.GuestPath, "/") {
			return fmt.Errorf("mounts[%d]: source missing or guest_path not absolute", i)
		}
	}
	for i, k := range p.EnvKeys {
		if !envKeyRe.MatchString(k) {
			return fmt.Errorf("env_keys[%d] is not a valid variable name", i)
		}
		if i > 0 && p.EnvKeys[i-1] >= k {
			return fmt.Errorf("env_keys must be sorted and unique")
		}
	}
	st, err := ParseTime(p.StartedAt)
	if err != nil {
		return fmt.Errorf("started_at: %v", err)
	}
	ft, err := ParseTime(p.FinishedAt)
	if err != nil {
		return fmt.Errorf("finished_at: %v", err)
	}
	if ft.Before(st) {
		return fmt.Errorf("finished_at is before started_at")
	}
	if !signerRe.MatchString(p.SignerID) {
		return fmt.Errorf("signer_id %q is not host:<hostname>", p.SignerID)
	}
	return nil
}

// CheckReceiptInChain confirms that the audit chain at chainPath holds the
// entry a verified receipt names and that the entry names the receipt.
func CheckReceiptInChain(p *ReceiptPayload, chainPath string) (Record, error) {
	rec, err := FindRecord(chainPath, p.AuditEntrySHA256)
	if err != nil {
		return Record{}, fmt.Errorf("audit entry %s: %w", short(p.AuditEntrySHA256), err)
	}
	if rec.Hash != p.AuditEntrySHA256 {
		return rec, fmt.Errorf("audit entry hash mismatch")
	}
	if id, _ := rec.Entry.Fields["receipt_id"].(string); id != p.ReceiptID {
		return rec, fmt.Errorf("audit entry %d names receipt %q, not %q", rec.Entry.Seq, id, p.ReceiptID)
	}
	return rec, nil
}

// MarshalReport renders a report as indented JSON (for --json output).
func MarshalReport(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }
