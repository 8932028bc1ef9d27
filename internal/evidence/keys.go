package evidence

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/atomicfile"
)

// Host key file names inside paths.Dirs.Keys().
const (
	// PrivateKeyFile holds the raw 32-byte Ed25519 seed, mode 0600.
	PrivateKeyFile = "host-signer.ed25519"
	// PublicKeyFile holds the raw 32-byte Ed25519 public key, mode 0644.
	PublicKeyFile = "host-signer.pub"
)

// Domain-separation prefixes: every signature covers prefix || JCS(payload)
// so that a signature made for one kind of document can never be presented
// as a signature over another.
const (
	DomainReceipt = "mvm/receipt/v1\x00"
	DomainAudit   = "mvm/audit/v1\x00"
	DomainPlan    = "mvm/plan/v1\x00"
)

// KeyPermError is returned when the private key file is readable or
// writable by anyone but its owner. Its message says how to fix it.
type KeyPermError struct {
	Path string
	Mode fs.FileMode
}

func (e *KeyPermError) Error() string {
	return fmt.Sprintf("host signing key %s has mode %04o, which lets other users read or change it; refusing to use it. Fix with: chmod 600 %s",
		e.Path, e.Mode.Perm(), e.Path)
}

// Signer is the host's signing identity.
type Signer struct {
	ID     string // "host:<hostname>"
	Public ed25519.PublicKey
	priv   ed25519.PrivateKey
}

// HostSignerID returns "host:<hostname>".
func HostSignerID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "localhost"
	}
	if len(h) > 253 {
		h = h[:253]
	}
	// Keep the id to a safe alphabet so it always fits the receipt schema.
	return "host:" + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' {
			return r
		}
		return '-'
	}, h)
}

// NewSigner wraps an existing private key (tests, imports).
func NewSigner(id string, priv ed25519.PrivateKey) *Signer {
	return &Signer{ID: id, Public: priv.Public().(ed25519.PublicKey), priv: priv}
}

// GenerateSigner makes a fresh in-memory signer (tests).
func GenerateSigner(id string) *Signer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return NewSigner(id, priv)
}

// Fingerprint is the lowercase hex SHA-256 of the signer's raw public key.
func (s *Signer) Fingerprint() string { return Fingerprint(s.Public) }

// Sign signs domain || msg.
func (s *Signer) Sign(domain string, msg []byte) []byte {
	return ed25519.Sign(s.priv, append([]byte(domain), msg...))
}

// Verify checks an Ed25519 signature over domain || msg.
func Verify(pub ed25519.PublicKey, domain string, msg, sig []byte) bool {
	if len(pub) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(pub, append([]byte(domain), msg...), sig)
}

// Fingerprint is the lowercase hex SHA-256 of a raw 32-byte public key.
func Fingerprint(pub ed25519.PublicKey) string { return SHA256Hex(pub) }

// LoadOrCreateSigner loads the host key from keysDir (paths.Dirs.Keys()),
// creating it on first use: the private key with mode 0600 and the public
// key beside it with mode 0644. A private key file with any group or other
// permission bits is refused with a *KeyPermError.
func LoadOrCreateSigner(keysDir string) (*Signer, error) {
	if err := os.MkdirAll(keysDir, 0o700); err != nil {
		return nil, err
	}
	privPath := filepath.Join(keysDir, PrivateKeyFile)
	pubPath := filepath.Join(keysDir, PublicKeyFile)
	s, err := loadSigner(privPath)
	if errors.Is(err, fs.ErrNotExist) {
		if err := createKey(privPath); err != nil {
			return nil, err
		}
		s, err = loadSigner(privPath)
	}
	if err != nil {
		return nil, err
	}
	// The public key file is a convenience copy; keep it in step.
	if cur, err := os.ReadFile(pubPath); err != nil || !bytes.Equal(cur, s.Public) {
		if err := atomicfile.WriteFile(pubPath, s.Public, 0o644); err != nil {
			return nil, fmt.Errorf("write public key: %w", err)
		}
	}
	return s, nil
}

// LoadSigner loads an existing host key from keysDir without creating one.
func LoadSigner(keysDir string) (*Signer, error) {
	return loadSigner(filepath.Join(keysDir, PrivateKeyFile))
}

func loadSigner(path string) (*Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("host signing key %s is not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, &KeyPermError{Path: path, Mode: st.Mode()}
	}
	buf, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, err
	}
	if len(buf) != ed25519.SeedSize {
		return nil, fmt.Errorf("host signing key %s: want %d raw bytes, found %d", path, ed25519.SeedSize, len(buf))
	}
	return NewSigner(HostSignerID(), ed25519.NewKeyFromSeed(buf)), nil
}

// createKey writes a new seed atomically: a temp file is filled and then
// hard-linked into place, so a concurrent creator either wins or loses the
// link and never sees a half-written key.
func createKey(path string) error {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	tmp, err := atomicfile.CreateTemp(filepath.Dir(path), ".host-signer-*")
	if err != nil {
		return err
	}
	defer tmp.Abort()
	if _, err := tmp.Write(seed); err != nil {
		return err
	}
	_, err = tmp.CommitNew(path, 0o600)
	return err
}

// ParsePublicKey accepts a public key as the raw 32 bytes or as base64 text
// (standard or URL alphabet, padded or not, surrounding whitespace allowed).
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	if len(b) == ed25519.PublicKeySize {
		return ed25519.PublicKey(bytes.Clone(b)), nil
	}
	txt := strings.TrimSpace(string(b))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(txt); err == nil && len(k) == ed25519.PublicKeySize {
			return ed25519.PublicKey(k), nil
		}
	}
	return nil, fmt.Errorf("public key must be %d raw bytes or their base64 text (got %d bytes)", ed25519.PublicKeySize, len(b))
}

// LoadPublicKey reads a public key file (raw 32 bytes or base64 text).
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := ParsePublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// TrustedKeysFile, in the keys directory, lists further public keys that
// receipts may be signed by (other hosts whose receipts this host checks):
// one base64 key per line; blank lines and lines starting with # are
// ignored.
const TrustedKeysFile = "trusted-keys"

// maxKeyList bounds a key list file.
const maxKeyList = 64 << 10

// ParseKeyList reads a key file: the raw 32 bytes of one key, or text with
// one base64 key per line (blank lines and # comments ignored).
func ParseKeyList(b []byte) ([]ed25519.PublicKey, error) {
	if len(b) == ed25519.PublicKeySize {
		return []ed25519.PublicKey{ed25519.PublicKey(bytes.Clone(b))}, nil
	}
	if len(b) > maxKeyList {
		return nil, fmt.Errorf("key list of %d bytes exceeds %d", len(b), maxKeyList)
	}
	var keys []ed25519.PublicKey
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := ParsePublicKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no public key in the file")
	}
	return keys, nil
}

// LoadKeyList reads a key file (see ParseKeyList).
func LoadKeyList(path string) ([]ed25519.PublicKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyList+1))
	if err != nil {
		return nil, err
	}
	keys, err := ParseKeyList(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}
