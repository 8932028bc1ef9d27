// Package approval keeps the record of reviewed workloads: `mvmctl
// approve IR.json` signs the workload's IR hash with the host key and
// stores it under the data directory; admission of a workload under the
// restrictive profile (or with MVM_REQUIRE_APPROVED=1) checks for a valid,
// signed approval of exactly that hash.
package approval

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/mvm-sandbox/mvm/internal/atomicfile"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// Domain separates approval signatures from every other signature made
// with the host key.
const Domain = "mvm-approval-v1\x00"

// RequireEnv, set to 1, makes every workload admission require approval.
const RequireEnv = "MVM_REQUIRE_APPROVED"

// Payload is what an approval signs.
type Payload struct {
	SchemaVersion   int    `json:"schema_version"`
	IRSHA256        string `json:"ir_sha256"`
	Name            string `json:"name"`
	ApprovedAt      string `json:"approved_at"`
	SignerID        string `json:"signer_id"`
	PublicKeySHA256 string `json:"public_key_sha256"`
}

// Approval is the stored record.
type Approval struct {
	Payload   Payload `json:"payload"`
	Signature string  `json:"signature"`
}

var hexRe = lazyre.New(`^[0-9a-f]{64}$`)

// Dir is the store under the data directory.
func Dir(dataDir string) string { return filepath.Join(dataDir, "approvals") }

// ErrNotApproved is returned by Check for a hash without a valid approval.
var ErrNotApproved = errors.New("workload is not approved")

// Approve records hash (of the workload named name) as approved, signed
// by s.
func Approve(dataDir, hash, name string, s *evidence.Signer, now time.Time) (*Approval, error) {
	if !hexRe.MatchString(hash) {
		return nil, fmt.Errorf("not a workload IR hash: %q", hash)
	}
	p := Payload{SchemaVersion: 1, IRSHA256: hash, Name: name, ApprovedAt: evidence.FormatTime(now),
		SignerID: s.ID, PublicKeySHA256: s.Fingerprint()}
	msg, err := evidence.Canonical(p)
	if err != nil {
		return nil, err
	}
	a := &Approval{Payload: p, Signature: base64.StdEncoding.EncodeToString(s.Sign(Domain, msg))}
	b, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return nil, err
	}
	dir := Dir(dataDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, hash+".json"), append(b, '\n'), 0o600); err != nil {
		return nil, err
	}
	return a, nil
}

// verify checks an approval's signature with pub.
func verify(a *Approval, pub ed25519.PublicKey) error {
	sig, err := base64.StdEncoding.DecodeString(a.Signature)
	if err != nil {
		return fmt.Errorf("signature is not base64: %w", err)
	}
	msg, err := evidence.Canonical(a.Payload)
	if err != nil {
		return err
	}
	if a.Payload.PublicKeySHA256 != evidence.Fingerprint(pub) || !ed25519.Verify(pub, append([]byte(Domain), msg...), sig) {
		return errors.New("signature does not verify with the host key")
	}
	return nil
}

func load(path string) (*Approval, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var a Approval
	dec := json.NewDecoder(&limited{f, 64 << 10})
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &a, nil
}

type limited struct {
	f interface{ Read([]byte) (int, error) }
	n int
}

func (l *limited) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("approval file too large")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.f.Read(p)
	l.n -= n
	return n, err
}

// Check returns the valid approval of hash, or an error wrapping
// ErrNotApproved.
func Check(dataDir, hash string, pub ed25519.PublicKey) (*Approval, error) {
	if !hexRe.MatchString(hash) {
		return nil, fmt.Errorf("%w: bad hash %q", ErrNotApproved, hash)
	}
	a, err := load(filepath.Join(Dir(dataDir), hash+".json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no approval of %s", ErrNotApproved, hash)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotApproved, err)
	}
	if a.Payload.IRSHA256 != hash {
		return nil, fmt.Errorf("%w: the approval file of %s approves %s", ErrNotApproved, hash, a.Payload.IRSHA256)
	}
	if err := verify(a, pub); err != nil {
		return nil, fmt.Errorf("%w: approval of %s: %v", ErrNotApproved, hash, err)
	}
	return a, nil
}

// Entry is one listed approval with its verification result.
type Entry struct {
	Approval
	Valid bool   `json:"valid"`
	Error string `json:"error,omitempty"`
}

// List returns every stored approval, newest first, each verified.
func List(dataDir string, pub ed25519.PublicKey) ([]Entry, error) {
	ents, err := os.ReadDir(Dir(dataDir))
	if errors.Is(err, os.ErrNotExist) {
		return []Entry{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []Entry{}
	for _, e := range ents {
		n := e.Name()
		if filepath.Ext(n) != ".json" || !hexRe.MatchString(n[:len(n)-5]) {
			continue
		}
		a, err := load(filepath.Join(Dir(dataDir), n))
		if err != nil {
			out = append(out, Entry{Approval: Approval{Payload: Payload{IRSHA256: n[:len(n)-5]}}, Error: err.Error()})
			continue
		}
		en := Entry{Approval: *a, Valid: true}
		if a.Payload.IRSHA256 != n[:len(n)-5] {
			en.Valid, en.Error = false, "file name and approved hash differ"
		} else if err := verify(a, pub); err != nil {
			en.Valid, en.Error = false, err.Error()
		}
		out = append(out, en)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Payload.ApprovedAt > out[j].Payload.ApprovedAt })
	return out, nil
}

// Required reports whether a workload admitted under profile needs an
// approval.
func Required(profile string, lookup func(string) (string, bool)) bool {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	if v, ok := lookup(RequireEnv); ok && v == "1" {
		return true
	}
	return profile == "restrictive"
}
