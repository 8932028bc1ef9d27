package evidence

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/testenv"
)

func TestKeyCreatedWithModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	s, err := LoadOrCreateSigner(dir)
	if err != nil {
		t.Fatal(err)
	}
	priv := filepath.Join(dir, PrivateKeyFile)
	pub := filepath.Join(dir, PublicKeyFile)
	for path, want := range map[string]os.FileMode{priv: 0o600, pub: 0o644} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %04o, want %04o", path, st.Mode().Perm(), want)
		}
	}
	raw, _ := os.ReadFile(pub)
	if !bytes.Equal(raw, s.Public) || len(raw) != 32 {
		t.Fatalf("public key file is not the raw 32-byte key")
	}
	s2, err := LoadOrCreateSigner(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.Public, s2.Public) {
		t.Fatal("reload produced another key")
	}
	if !strings.HasPrefix(s.ID, "host:") {
		t.Fatalf("signer id %q", s.ID)
	}
	k, err := LoadPublicKey(pub)
	if err != nil || !bytes.Equal(k, s.Public) {
		t.Fatalf("LoadPublicKey: %v", err)
	}
}

func TestKeyLoosePermissionsRefused(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateSigner(dir); err != nil {
		t.Fatal(err)
	}
	priv := filepath.Join(dir, PrivateKeyFile)
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		if err := os.Chmod(priv, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadOrCreateSigner(dir)
		var pe *KeyPermError
		if !errors.As(err, &pe) {
			t.Fatalf("mode %04o: want KeyPermError, got %v", mode, err)
		}
		if !strings.Contains(err.Error(), "chmod 600 "+priv) {
			t.Fatalf("message does not say how to fix: %v", err)
		}
	}
	if err := os.Chmod(priv, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSigner(dir); err != nil {
		t.Fatalf("after chmod 600: %v", err)
	}
}

func TestKeyConcurrentCreateAgrees(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	keys := make([][]byte, 8)
	for i := range keys {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := LoadOrCreateSigner(dir)
			if err != nil {
				t.Error(err)
				return
			}
			keys[i] = s.Public
		}(i)
	}
	wg.Wait()
	for i := range keys {
		if !bytes.Equal(keys[i], keys[0]) {
			t.Fatal("concurrent creators disagree on the key")
		}
	}
}

func TestParsePublicKey(t *testing.T) {
	s := GenerateSigner("host:test")
	for name, in := range map[string][]byte{
		"raw":       s.Public,
		"base64":    []byte(base64.StdEncoding.EncodeToString(s.Public) + "\n"),
		"base64url": []byte(base64.RawURLEncoding.EncodeToString(s.Public)),
	} {
		k, err := ParsePublicKey(in)
		if err != nil || !bytes.Equal(k, s.Public) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := ParsePublicKey([]byte("not a key")); err == nil {
		t.Error("garbage accepted")
	}
}

// Rewriting the public key file fails half-way (the disk filled up): the
// old file stays whole, nothing is left beside it, and the private key is
// untouched.
func TestPublicKeyRewriteFailureKeepsOldFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	if _, err := LoadOrCreateSigner(dir); err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(dir, PublicKeyFile)
	stale := []byte("stale")
	if err := os.WriteFile(pub, stale, 0o644); err != nil {
		t.Fatal(err)
	}
	priv, _ := os.ReadFile(filepath.Join(dir, PrivateKeyFile))
	restore := testenv.LimitFileSize(t, 8)
	_, err := LoadOrCreateSigner(dir)
	restore()
	if err == nil {
		t.Fatal("the rewrite past the file size limit succeeded")
	}
	if b, _ := os.ReadFile(pub); !bytes.Equal(b, stale) {
		t.Fatalf("public key file changed: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, PrivateKeyFile)); !bytes.Equal(b, priv) {
		t.Fatal("private key changed")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("left behind: %v", ents)
	}
	if s, err := LoadOrCreateSigner(dir); err != nil || !bytes.Equal(mustRead(t, pub), s.Public) {
		t.Fatalf("repair: %v", err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
