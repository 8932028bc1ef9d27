package plan

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/gofrs/flock"
	"github.com/mvm-sandbox/mvm/internal/atomicfile"
	"github.com/mvm-sandbox/mvm/internal/evidence"
)

// LedgerPath is the nonce ledger's location under the data dir.
func LedgerPath(dataDir string) string { return filepath.Join(dataDir, "plan", "nonces.json") }

// Ledger remembers the nonces of admitted plans until their valid_until
// passes, so a plan can be admitted once only — across processes: the file
// is read, pruned, checked and rewritten under an exclusive flock on
// <path>.lock.
type Ledger struct {
	path string
	mu   sync.Mutex
}

// OpenLedger returns the ledger kept at path (see LedgerPath).
func OpenLedger(path string) *Ledger { return &Ledger{path: path} }

// Path returns the ledger file path.
func (l *Ledger) Path() string { return l.path }

type ledgerEntry struct {
	Signer     string `json:"signer"` // public key fingerprint
	Nonce      string `json:"nonce"`
	ValidUntil string `json:"valid_until"`
}

type ledgerFile struct {
	Version int           `json:"version"`
	Entries []ledgerEntry `json:"entries"`
}

// Consume records nonce for signer, refusing it with ErrReplay when it is
// already recorded. Entries whose valid_until is not after now are pruned.
func (l *Ledger) Consume(signer, nonce string, validUntil, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(l.path), 0o700); err != nil {
		return err
	}
	lk := flock.New(l.path+".lock", flock.SetPermissions(0o600))
	if err := lk.Lock(); err != nil {
		return fmt.Errorf("nonce ledger lock: %w", err)
	}
	defer lk.Unlock()

	var lf ledgerFile
	b, err := os.ReadFile(l.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(b, &lf); err != nil {
			// Fail closed: a ledger we cannot read could hide a replay.
			return fmt.Errorf("nonce ledger %s is corrupt (%v); refusing admission", l.path, err)
		}
	}
	kept := lf.Entries[:0]
	for _, e := range lf.Entries {
		t, err := evidence.ParseTime(e.ValidUntil)
		if err == nil && !t.After(now) {
			continue // expired: a plan carrying it fails its window check anyway
		}
		if e.Signer == signer && e.Nonce == nonce {
			return fmt.Errorf("%w for signer %s; nonce %s", ErrReplay, signer, nonce)
		}
		kept = append(kept, e)
	}
	kept = append(kept, ledgerEntry{Signer: signer, Nonce: nonce, ValidUntil: evidence.FormatTime(validUntil)})
	sort.Slice(kept, func(i, j int) bool { return kept[i].ValidUntil < kept[j].ValidUntil })
	out, err := json.Marshal(ledgerFile{Version: 1, Entries: kept})
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(l.path, append(out, '\n'), 0o600)
}
