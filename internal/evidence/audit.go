package evidence

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gofrs/flock"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// Audit chain file names inside paths.Dirs.Audit().
const (
	ChainFile     = "chain.jsonl"
	ChainLockFile = "chain.lock"
)

// MaxEntryBytes bounds one audit line (entries are small: ids and hashes).
const MaxEntryBytes = 64 << 10

// Audit entry kinds. Any kind matching KindPattern is accepted; these are
// the ones mvm itself writes.
const (
	KindPlanAdmitted   = "plan.admitted"
	KindPlanRefused    = "plan.refused"
	KindSandboxStarted = "sandbox.started"
	KindSandboxStopped = "sandbox.stopped"
	KindSandboxFailed  = "sandbox.failed"
	KindExecStarted    = "exec.started"
	KindExecFinished   = "exec.finished"
	KindFileCopied     = "file.copied"
	KindConsoleOpened  = "console.opened"
	KindConsoleClosed  = "console.closed"
	KindNetAllowed     = "net.allowed"
	KindNetDenied      = "net.denied"
)

// KindPattern is the syntax of an audit entry kind.
var KindPattern = lazyre.New(`^[a-z]+(\.[a-z_]+)+$`)

// Entry is one audit chain entry. On disk each entry is one line holding
// exactly JCS(entry) followed by "\n".
//
// Fields holds ids, hashes, counts and policy tags ONLY — never argv
// values, env values, stdio bytes, file contents or paths chosen by the
// guest. Append enforces the shape (see ValidateFields); the meaning is the
// caller's responsibility. Use RedactInvocation / RunRecord.AuditFields to
// build fields for executions.
type Entry struct {
	Seq       uint64         `json:"seq"`
	Time      string         `json:"time"`
	Kind      string         `json:"kind"`
	Subject   string         `json:"subject"`
	Fields    map[string]any `json:"fields"`
	Prev      string         `json:"prev"`
	Signer    string         `json:"signer"`
	KeySHA256 string         `json:"key_sha256"`
	Signature string         `json:"signature,omitempty"`
}

// Record is an entry as read from (or written to) the chain file.
type Record struct {
	Entry  Entry  `json:"entry"`
	Hash   string `json:"hash"`   // sha256 hex of the canonical line (without "\n")
	Offset int64  `json:"offset"` // byte offset of the line in the file
	Raw    []byte `json:"-"`      // the canonical line without "\n"
}

// SigningBytes returns JCS of the entry without its signature field.
func (e Entry) SigningBytes() ([]byte, error) {
	e.Signature = ""
	if e.Fields == nil {
		e.Fields = map[string]any{}
	}
	return Canonical(e)
}

// CanonicalBytes returns JCS of the full entry: the bytes of its line and
// the input of its hash.
func (e Entry) CanonicalBytes() ([]byte, error) {
	if e.Fields == nil {
		e.Fields = map[string]any{}
	}
	return Canonical(e)
}

// Hash returns the entry's own hash: sha256 hex of CanonicalBytes. The next
// entry's prev equals it.
func (e Entry) Hash() (string, error) {
	b, err := e.CanonicalBytes()
	if err != nil {
		return "", err
	}
	return SHA256Hex(b), nil
}

// ErrBadAuditID is returned by FindRecord for an id that is neither a seq
// number nor a hash prefix.
var ErrBadAuditID = errors.New("invalid audit entry id")

// ErrNoSuchEntry is returned by FindRecord when nothing matches.
var ErrNoSuchEntry = errors.New("not found")

// ErrChainCorrupt is returned by Append when the last complete entry cannot
// be parsed; the chain must be inspected with Verify before more is added.
var ErrChainCorrupt = errors.New("audit chain is corrupt")

// Chain is the append-only audit log at <auditDir>/chain.jsonl. Appends from
// any number of goroutines and processes are serialised with an exclusive
// flock on <auditDir>/chain.lock.
type Chain struct {
	dir    string
	signer *Signer
	// Now is the clock used for entry times (tests may replace it).
	Now func() time.Time
	mu  sync.Mutex
}

// OpenChain returns the chain kept in auditDir (paths.Dirs.Audit()), signing
// with s. Nothing is touched until the first Append.
func OpenChain(auditDir string, s *Signer) *Chain {
	return &Chain{dir: auditDir, signer: s, Now: time.Now}
}

// ChainPath returns the chain file path inside auditDir.
func ChainPath(auditDir string) string { return filepath.Join(auditDir, ChainFile) }

// Path returns the chain file path.
func (c *Chain) Path() string { return ChainPath(c.dir) }

// Append adds one signed entry and returns it with its hash. The line is
// written with a single write and fsynced before Append returns. A torn
// tail left by a crash (bytes after the last "\n") is truncated first.
func (c *Chain) Append(kind, subject string, fields map[string]any) (Record, error) {
	if !KindPattern.MatchString(kind) {
		return Record{}, fmt.Errorf("audit: invalid kind %q (want %s)", kind, KindPattern)
	}
	if err := validateSubject(subject); err != nil {
		return Record{}, err
	}
	norm, err := ValidateFields(fields)
	if err != nil {
		return Record{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return Record{}, err
	}
	lk := flock.New(filepath.Join(c.dir, ChainLockFile), flock.SetPermissions(0o600))
	if err := lk.Lock(); err != nil {
		return Record{}, fmt.Errorf("audit: lock: %w", err)
	}
	defer lk.Unlock()

	f, err := os.OpenFile(c.Path(), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return Record{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Record{}, err
	}
	last, end, err := readLastLine(f, st.Size())
	if err != nil {
		return Record{}, err
	}
	if end < st.Size() {
		// Torn tail: a previous append died mid-write. It was never
		// acknowledged, so drop it to keep the chain valid.
		if err := f.Truncate(end); err != nil {
			return Record{}, fmt.Errorf("audit: truncate torn tail: %w", err)
		}
		if err := f.Sync(); err != nil {
			return Record{}, err
		}
	}
	seq, prev := uint64(1), ZeroHash
	if last != nil {
		var pe Entry
		if err := decodeStrict(last, &pe); err != nil || pe.Seq == 0 {
			return Record{}, fmt.Errorf("%w: last entry at byte offset %d does not parse (run `mvmctl audit verify`)", ErrChainCorrupt, end-int64(len(last))-1)
		}
		seq, prev = pe.Seq+1, SHA256Hex(last)
	}
	e := Entry{
		Seq:       seq,
		Time:      FormatTime(c.Now()),
		Kind:      kind,
		Subject:   subject,
		Fields:    norm,
		Prev:      prev,
		Signer:    c.signer.ID,
		KeySHA256: c.signer.Fingerprint(),
	}
	sb, err := e.SigningBytes()
	if err != nil {
		return Record{}, err
	}
	e.Signature = base64.StdEncoding.EncodeToString(c.signer.Sign(DomainAudit, sb))
	line, err := e.CanonicalBytes()
	if err != nil {
		return Record{}, err
	}
	if len(line)+1 > MaxEntryBytes {
		return Record{}, fmt.Errorf("audit: entry of %d bytes exceeds %d", len(line), MaxEntryBytes)
	}
	buf := make([]byte, 0, len(line)+1)
	buf = append(append(buf, line...), '\n')
	if _, err := f.Write(buf); err != nil {
		return Record{}, fmt.Errorf("audit: write: %w", err)
	}
	if err := f.Sync(); err != nil {
		return Record{}, fmt.Errorf("audit: fsync: %w", err)
	}
	// Re-decode so the returned entry carries the same value types a reader sees.
	var out Entry
	if err := decodeStrict(line, &out); err != nil {
		return Record{}, err
	}
	off := end
	return Record{Entry: out, Hash: SHA256Hex(line), Offset: off, Raw: line}, nil
}

// readLastLine finds, by reading backwards from size, the last complete line
// (without its "\n") and the offset just past its "\n" (0 and nil when the
// file holds no complete line). Bytes in [end, size) are a torn tail.
func readLastLine(f *os.File, size int64) (line []byte, end int64, err error) {
	nl, err := lastByteBefore(f, size, '\n', MaxEntryBytes)
	if err != nil {
		return nil, 0, err
	}
	if nl < 0 {
		return nil, 0, nil
	}
	end = nl + 1
	start, err := lastByteBefore(f, nl, '\n', MaxEntryBytes)
	if err != nil {
		return nil, 0, err
	}
	line = make([]byte, nl-(start+1))
	if _, err := f.ReadAt(line, start+1); err != nil {
		return nil, 0, err
	}
	return line, end, nil
}

// lastByteBefore returns the offset of the last c in [0, pos), -1 when there
// is none, scanning at most limit bytes back.
func lastByteBefore(f *os.File, pos int64, c byte, limit int64) (int64, error) {
	const chunk = 8 << 10
	buf := make([]byte, chunk)
	scanned := int64(0)
	for pos > 0 {
		n := int64(chunk)
		if n > pos {
			n = pos
		}
		pos -= n
		if _, err := f.ReadAt(buf[:n], pos); err != nil {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf[:n], c); i >= 0 {
			return pos + int64(i), nil
		}
		scanned += n
		if scanned > limit {
			return 0, fmt.Errorf("%w: no line break in the last %d bytes", ErrChainCorrupt, scanned)
		}
	}
	return -1, nil
}

// forbiddenFieldKeys name data-plane streams; evidence never stores them.
var forbiddenFieldKeys = map[string]bool{
	"argv": true, "args": true, "arg": true, "command": true, "cmd": true,
	"env": true, "environ": true, "environment": true,
	"stdin": true, "stdout": true, "stderr": true, "output": true, "input": true,
	"content": true, "contents": true, "data": true, "body": true, "payload": true,
	"secret": true, "secrets": true, "password": true, "token": true,
}

var fieldKeyRe = lazyre.New(`^[a-z][a-z0-9_]{0,63}$`)

// Limits on audit field shapes.
const (
	MaxFields         = 32
	MaxFieldString    = 256
	MaxFieldListItems = 64
	maxSafeInt        = 1 << 53
)

// ValidateFields checks that fields has the shape evidence allows and returns
// a normalised copy. Keys match ^[a-z][a-z0-9_]*$ and must not name a
// data-plane stream (argv, env, stdout, content, ...: use argv_sha256,
// stdout_bytes, env_keys instead). Values are null, bools, integers within
// ±2^53, finite floats, short single-line strings or short lists of them.
func ValidateFields(fields map[string]any) (map[string]any, error) {
	out := make(map[string]any, len(fields))
	if len(fields) > MaxFields {
		return nil, fmt.Errorf("audit: %d fields exceed the limit of %d", len(fields), MaxFields)
	}
	for k, v := range fields {
		if !fieldKeyRe.MatchString(k) {
			return nil, fmt.Errorf("audit: field key %q must match %s", k, fieldKeyRe)
		}
		if forbiddenFieldKeys[k] {
			return nil, fmt.Errorf("audit: field %q would carry data-plane bytes; record a hash or count instead (e.g. %s_sha256, %s_bytes)", k, k, k)
		}
		nv, err := normFieldValue(v)
		if err != nil {
			return nil, fmt.Errorf("audit: field %q: %w", k, err)
		}
		out[k] = nv
	}
	return out, nil
}

func normFieldValue(v any) (any, error) {
	switch x := v.(type) {
	case nil, bool:
		return x, nil
	case string:
		return x, checkFieldString(x)
	case int:
		return checkInt(int64(x))
	case int8:
		return checkInt(int64(x))
	case int16:
		return checkInt(int64(x))
	case int32:
		return checkInt(int64(x))
	case int64:
		return checkInt(x)
	case uint:
		return checkUint(uint64(x))
	case uint8:
		return checkUint(uint64(x))
	case uint16:
		return checkUint(uint64(x))
	case uint32:
		return checkUint(uint64(x))
	case uint64:
		return checkUint(x)
	case float32:
		return checkFloat(float64(x))
	case float64:
		return checkFloat(x)
	case json.Number:
		f, err := x.Float64()
		if err != nil {
			return nil, err
		}
		return checkFloat(f)
	case []string:
		if len(x) > MaxFieldListItems {
			return nil, fmt.Errorf("list of %d items exceeds %d", len(x), MaxFieldListItems)
		}
		for _, s := range x {
			if err := checkFieldString(s); err != nil {
				return nil, err
			}
		}
		return append([]string{}, x...), nil
	case []any:
		if len(x) > MaxFieldListItems {
			return nil, fmt.Errorf("list of %d items exceeds %d", len(x), MaxFieldListItems)
		}
		ss := make([]string, len(x))
		for i, e := range x {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("lists may hold only strings, found %T", e)
			}
			if err := checkFieldString(s); err != nil {
				return nil, err
			}
			ss[i] = s
		}
		return ss, nil
	default:
		return nil, fmt.Errorf("unsupported value type %T (use ids, hashes, counts or tags)", v)
	}
}

func checkFieldString(s string) error {
	if len(s) > MaxFieldString {
		return fmt.Errorf("string of %d bytes exceeds %d (record a hash instead)", len(s), MaxFieldString)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("string is not valid UTF-8")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("string holds control characters")
		}
	}
	return nil
}

func checkInt(i int64) (any, error) {
	if i > maxSafeInt || i < -maxSafeInt {
		return nil, fmt.Errorf("integer %d outside ±2^53", i)
	}
	return i, nil
}

func checkUint(u uint64) (any, error) {
	if u > maxSafeInt {
		return nil, fmt.Errorf("integer %d outside ±2^53", u)
	}
	return u, nil
}

func checkFloat(f float64) (any, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("number is not finite")
	}
	if f == math.Trunc(f) && (f > maxSafeInt || f < -maxSafeInt) {
		return nil, fmt.Errorf("integer %v outside ±2^53", f)
	}
	return f, nil
}

func validateSubject(s string) error {
	if len(s) > 128 {
		return fmt.Errorf("audit: subject of %d bytes exceeds 128", len(s))
	}
	if err := checkFieldString(s); err != nil {
		return fmt.Errorf("audit: subject: %w", err)
	}
	return nil
}

// ChainFailure locates the first bad entry found by VerifyChain.
type ChainFailure struct {
	Line   int    `json:"line"`   // 1-based line number in the file
	Seq    uint64 `json:"seq"`    // the seq that was expected at this line
	Offset int64  `json:"offset"` // byte offset of the line
	Check  string `json:"check"`  // parse, canonical, schema, seq, prev, key, signature
	Reason string `json:"reason"`
}

func (f *ChainFailure) Error() string {
	return fmt.Sprintf("audit chain invalid at entry %d (line %d, byte offset %d): %s check failed: %s",
		f.Seq, f.Line, f.Offset, f.Check, f.Reason)
}

// ChainReport is the result of VerifyChain.
type ChainReport struct {
	OK       bool          `json:"ok"`
	Path     string        `json:"path"`
	Entries  int           `json:"entries"`            // valid entries before any failure
	HeadSeq  uint64        `json:"head_seq"`           // seq of the last valid entry
	HeadHash string        `json:"head_hash"`          // hash of the last valid entry
	Warning  string        `json:"warning,omitempty"`  // torn tail
	TornAt   int64         `json:"torn_at,omitempty"`  // byte offset of the torn tail
	TornLen  int64         `json:"torn_len,omitempty"` // bytes in the torn tail
	Failure  *ChainFailure `json:"failure,omitempty"`
}

// Err returns the failure as an error, nil when the chain is valid.
func (r *ChainReport) Err() error {
	if r.Failure == nil {
		return nil
	}
	return r.Failure
}

// VerifyChain walks the whole chain at path and checks every entry against
// pub: strict parse, canonical form, schema, contiguous seq from 1, prev
// link to the previous entry's hash, key fingerprint and signature. It
// stops at the first bad entry and reports its position. A missing file is
// an empty, valid chain. Bytes after the last "\n" are a torn tail from an
// interrupted append: the report stays OK and carries a Warning; the next
// Append removes them. err is non-nil only for I/O problems.
func VerifyChain(path string, pub ed25519.PublicKey) (*ChainReport, error) {
	rep := &ChainReport{OK: true, Path: path, HeadHash: ZeroHash}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return rep, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("verify audit chain: a %d-byte Ed25519 public key is required", ed25519.PublicKeySize)
	}
	fp := Fingerprint(pub)
	r := bufio.NewReaderSize(f, MaxEntryBytes+1)
	var off int64
	prev := ZeroHash
	for lineNo := 1; ; lineNo++ {
		raw, err := r.ReadSlice('\n')
		fail := func(check, format string, a ...any) (*ChainReport, error) {
			rep.OK = false
			rep.Failure = &ChainFailure{Line: lineNo, Seq: uint64(lineNo), Offset: off, Check: check, Reason: fmt.Sprintf(format, a...)}
			return rep, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			return fail("parse", "line longer than %d bytes", MaxEntryBytes)
		}
		if err == io.EOF {
			if len(raw) > 0 {
				rep.TornAt, rep.TornLen = off, int64(len(raw))
				rep.Warning = fmt.Sprintf("valid up to entry %d; trailing partial entry at byte offset %d (%d bytes, from an interrupted append; the next append removes it)",
					rep.HeadSeq, off, len(raw))
			}
			return rep, nil
		}
		if err != nil {
			return nil, err
		}
		line := raw[:len(raw)-1]
		e, check, reason := checkEntry(line)
		if check != "" {
			return fail(check, "%s", reason)
		}
		if e.Seq != uint64(lineNo) {
			return fail("seq", "expected seq %d, found seq %d (an entry was deleted, inserted or reordered)", lineNo, e.Seq)
		}
		if e.Prev != prev {
			return fail("prev", "prev is %s but the previous entry hashes to %s (an earlier entry was edited, deleted or reordered)", short(e.Prev), short(prev))
		}
		if e.KeySHA256 != fp {
			return fail("key", "entry is signed by key %s, expected key %s", short(e.KeySHA256), short(fp))
		}
		sig, err := base64.StdEncoding.Strict().DecodeString(e.Signature)
		if err != nil || len(sig) != ed25519.SignatureSize {
			return fail("signature", "signature is not %d bytes of base64", ed25519.SignatureSize)
		}
		sb, err := e.SigningBytes()
		if err != nil {
			return fail("canonical", "%v", err)
		}
		if !Verify(pub, DomainAudit, sb, sig) {
			return fail("signature", "Ed25519 signature does not verify (the entry was altered)")
		}
		prev = SHA256Hex(line)
		rep.Entries++
		rep.HeadSeq, rep.HeadHash = e.Seq, prev
		off += int64(len(raw))
	}
}

// checkEntry parses one line and checks its form and schema (not its
// links or signature). It returns the failed check name and reason.
func checkEntry(line []byte) (Entry, string, string) {
	var e Entry
	if err := decodeStrict(line, &e); err != nil {
		return e, "parse", "not a valid entry: " + err.Error()
	}
	c, err := e.CanonicalBytes()
	if err != nil {
		return e, "canonical", err.Error()
	}
	if !bytes.Equal(c, line) {
		return e, "canonical", "line is not the RFC 8785 canonical encoding of its entry"
	}
	switch {
	case e.Seq == 0:
		return e, "schema", "seq must start at 1"
	case !KindPattern.MatchString(e.Kind):
		return e, "schema", fmt.Sprintf("invalid kind %q", e.Kind)
	case !IsHex64(e.Prev):
		return e, "schema", "prev is not a sha256 hex digest"
	case !IsHex64(e.KeySHA256):
		return e, "schema", "key_sha256 is not a sha256 hex digest"
	case e.Fields == nil:
		return e, "schema", "fields missing"
	}
	if _, err := ParseTime(e.Time); err != nil {
		return e, "schema", "time: " + err.Error()
	}
	return e, "", ""
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}

// ReadRecords reads the complete entries that start at byte offset from and
// returns them with the offset just past the last complete line. A partial
// trailing line is left for a later call. If the file is shorter than from
// (a torn tail was truncated), reading restarts at the file's last complete
// line boundary at or before from.
func ReadRecords(path string, from int64) ([]Record, int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, from, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, from, err
	}
	if st.Size() < from {
		nl, err := lastByteBefore(f, st.Size(), '\n', MaxEntryBytes)
		if err != nil {
			return nil, from, err
		}
		from = nl + 1
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil, from, err
	}
	r := bufio.NewReaderSize(f, MaxEntryBytes+1)
	var recs []Record
	off := from
	for {
		raw, err := r.ReadSlice('\n')
		if err == io.EOF {
			return recs, off, nil
		}
		if err != nil {
			return recs, off, err
		}
		line := bytes.Clone(raw[:len(raw)-1])
		rec, perr := parseRecord(line, off)
		if perr != nil {
			return recs, off, perr
		}
		recs = append(recs, rec)
		off += int64(len(raw))
	}
}

func parseRecord(line []byte, off int64) (Record, error) {
	var e Entry
	if err := decodeStrict(line, &e); err != nil {
		return Record{}, fmt.Errorf("audit entry at byte offset %d does not parse: %w", off, err)
	}
	return Record{Entry: e, Hash: SHA256Hex(line), Offset: off, Raw: line}, nil
}

// TailRecords returns the last n complete entries (all when n <= 0 reads the
// whole file) and the offset just past the last complete line, reading
// backwards from the end of the file.
func TailRecords(path string, n int) ([]Record, int64, error) {
	if n <= 0 {
		return ReadRecords(path, 0)
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	endNL, err := lastByteBefore(f, st.Size(), '\n', MaxEntryBytes)
	if err != nil {
		return nil, 0, err
	}
	end := endNL + 1
	start := end
	pos := endNL
	for i := 0; i < n && pos >= 0; i++ {
		p, err := lastByteBefore(f, pos, '\n', MaxEntryBytes)
		if err != nil {
			return nil, 0, err
		}
		start = p + 1
		pos = p
	}
	recs, next, err := ReadRecords(path, start)
	if err != nil {
		return nil, 0, err
	}
	if next > end {
		// Entries were appended meanwhile; report only those that existed.
		keep := recs[:0]
		for _, r := range recs {
			if r.Offset < end {
				keep = append(keep, r)
			}
		}
		recs, next = keep, end
	}
	return recs, next, nil
}

// FindRecord finds an entry by seq number ("42") or by a prefix of at least
// 4 hex digits of its hash.
func FindRecord(path, id string) (Record, error) {
	id = strings.ToLower(strings.TrimSpace(id))
	seq, serr := strconv.ParseUint(id, 10, 64)
	bySeq := serr == nil
	if !bySeq && (len(id) < 4 || !isHex(id)) {
		return Record{}, fmt.Errorf("%w %q: want a seq number or at least 4 hex digits of an entry hash", ErrBadAuditID, id)
	}
	recs, _, err := ReadRecords(path, 0)
	if err != nil {
		return Record{}, err
	}
	if bySeq {
		for _, r := range recs {
			if r.Entry.Seq == seq {
				return r, nil
			}
		}
		if len(id) < 4 {
			return Record{}, fmt.Errorf("no audit entry with seq %d: %w", seq, ErrNoSuchEntry)
		}
		// An all-digit id that is no seq may still be a hash prefix.
	}
	var hits []Record
	for _, r := range recs {
		if strings.HasPrefix(r.Hash, id) {
			hits = append(hits, r)
		}
	}
	switch len(hits) {
	case 0:
		return Record{}, fmt.Errorf("no audit entry matches %q: %w", id, ErrNoSuchEntry)
	case 1:
		return hits[0], nil
	default:
		seqs := make([]string, len(hits))
		for i, h := range hits {
			seqs[i] = strconv.FormatUint(h.Entry.Seq, 10)
		}
		sort.Strings(seqs)
		return Record{}, fmt.Errorf("audit hash prefix %q is ambiguous (seq %s)", id, strings.Join(seqs, ", "))
	}
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
