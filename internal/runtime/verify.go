package runtime

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/mvm-sandbox/mvm/internal/evidence"
)

// Evidence reading and verification: the receipt and audit commands of
// every surface go through these, so that which keys are trusted and where
// the chain lives is decided in one place.

// TrustedKeys returns the keys receipts are verified against by default:
// this host's public key and the keys listed in <keys>/trusted-keys, with
// a description of where they came from. No key at all is not an error
// here; VerifyReceipt refuses then.
func (r *Runtime) TrustedKeys() ([]ed25519.PublicKey, []string, error) {
	var keys []ed25519.PublicKey
	var from []string
	host := filepath.Join(r.Dirs.Keys(), evidence.PublicKeyFile)
	switch k, err := evidence.LoadPublicKey(host); {
	case err == nil:
		keys, from = append(keys, k), append(from, host)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, nil, fmt.Errorf("host public key: %w", err)
	}
	list := filepath.Join(r.Dirs.Keys(), evidence.TrustedKeysFile)
	switch ks, err := evidence.LoadKeyList(list); {
	case err == nil:
		keys, from = append(keys, ks...), append(from, list)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, nil, fmt.Errorf("trusted keys: %w", err)
	}
	return keys, from, nil
}

// VerifyReceiptOptions say what a receipt is checked against.
type VerifyReceiptOptions struct {
	// Keys, when given, are the only trusted keys (replacing the host's).
	Keys []ed25519.PublicKey
	// AnyKey accepts the key the receipt embeds (integrity, not origin).
	AnyKey bool
	// Audit also requires the local audit chain to hold the receipt's
	// exec.finished entry.
	Audit bool
}

// ReceiptVerification is a receipt report with the keys it was checked
// against.
type ReceiptVerification struct {
	*evidence.ReceiptReport
	// TrustedFrom lists where the trusted keys came from ("" entries for
	// keys given by the caller); empty with AnyKey.
	TrustedFrom []string `json:"trusted_from,omitempty"`
	AnyKey      bool     `json:"any_key,omitempty"`
}

// VerifyReceipt checks a receipt's bytes offline. By default the signer
// must be this host's key (or one in the trusted-keys file); with no such
// key the trusted_key check fails. It returns the report and, when a
// check failed, a *evidence.ReceiptError naming it.
func (r *Runtime) VerifyReceipt(data []byte, o VerifyReceiptOptions) (*ReceiptVerification, error) {
	trust := evidence.Trust{Keys: o.Keys, AnyKey: o.AnyKey}
	out := &ReceiptVerification{AnyKey: o.AnyKey}
	if !o.AnyKey {
		if len(o.Keys) == 0 {
			keys, from, err := r.TrustedKeys()
			if err != nil {
				return nil, err
			}
			trust.Keys, out.TrustedFrom = keys, from
		} else {
			for range o.Keys {
				out.TrustedFrom = append(out.TrustedFrom, "")
			}
		}
	}
	rep, err := evidence.VerifyReceipt(data, trust)
	out.ReceiptReport = rep
	if err != nil || !o.Audit {
		return out, err
	}
	chain := r.AuditChainPath()
	rec, cerr := evidence.CheckReceiptInChain(rep.Payload, chain)
	c := evidence.Check{Name: "audit_entry", OK: cerr == nil}
	if cerr != nil {
		c.Detail = cerr.Error()
		rep.OK, rep.Failed = false, c.Name
		err = &evidence.ReceiptError{Check: c.Name, Reason: cerr.Error()}
	} else {
		c.Detail = fmt.Sprintf("entry %d in %s", rec.Entry.Seq, chain)
	}
	rep.Checks = append(rep.Checks, c)
	return out, err
}

// AuditChainPath is the audit chain file.
func (r *Runtime) AuditChainPath() string { return evidence.ChainPath(r.Dirs.Audit()) }

// AuditTail returns the last n entries and the offset after the last
// complete one (n = 0: no entries, the offset of the end).
func (r *Runtime) AuditTail(n int) ([]evidence.Record, int64, error) {
	if n == 0 {
		_, off, err := evidence.TailRecords(r.AuditChainPath(), 1)
		return nil, off, err
	}
	return evidence.TailRecords(r.AuditChainPath(), n)
}

// AuditSince returns the entries that start at or after offset from.
func (r *Runtime) AuditSince(from int64) ([]evidence.Record, int64, error) {
	return evidence.ReadRecords(r.AuditChainPath(), from)
}

// AuditShow finds one entry by seq number or hash prefix.
func (r *Runtime) AuditShow(id string) (evidence.Record, error) {
	return evidence.FindRecord(r.AuditChainPath(), id)
}

// ErrNoHostKey means the chain exists but this host's public key does not.
var ErrNoHostKey = errors.New("no host public key")

// AuditVerify walks the whole chain with pub, or with this host's public
// key when pub is nil. No key and no chain is an empty, valid chain.
func (r *Runtime) AuditVerify(pub ed25519.PublicKey) (*evidence.ChainReport, error) {
	path := r.AuditChainPath()
	if pub == nil {
		hostPub := filepath.Join(r.Dirs.Keys(), evidence.PublicKeyFile)
		k, err := evidence.LoadPublicKey(hostPub)
		switch {
		case err == nil:
			pub = k
		case errors.Is(err, fs.ErrNotExist):
			if _, serr := os.Stat(path); serr == nil {
				return nil, fmt.Errorf("%w at %s: give the key the chain was signed with", ErrNoHostKey, hostPub)
			}
			// No key and no chain: nothing was ever recorded.
			pub = make(ed25519.PublicKey, ed25519.PublicKeySize)
		default:
			return nil, err
		}
	}
	return evidence.VerifyChain(path, pub)
}
