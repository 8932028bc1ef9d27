package approval

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/evidence"
)

func TestApproveCheckList(t *testing.T) {
	data := t.TempDir()
	s, err := evidence.LoadOrCreateSigner(filepath.Join(data, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	h := strings.Repeat("ab", 32)
	if _, err := Check(data, h, s.Public); !errors.Is(err, ErrNotApproved) {
		t.Fatalf("unapproved: %v", err)
	}
	if _, err := Approve(data, h, "worker", s, time.Now()); err != nil {
		t.Fatal(err)
	}
	if a, err := Check(data, h, s.Public); err != nil || a.Payload.Name != "worker" {
		t.Fatalf("approved: %v", err)
	}
	st, _ := os.Stat(filepath.Join(Dir(data), h+".json"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode())
	}
	// another key does not accept it
	other, _ := evidence.LoadOrCreateSigner(filepath.Join(t.TempDir(), "keys"))
	if _, err := Check(data, h, other.Public); !errors.Is(err, ErrNotApproved) {
		t.Fatalf("other key: %v", err)
	}
	// a tampered approval (renamed to approve another hash) is refused
	h2 := strings.Repeat("cd", 32)
	b, _ := os.ReadFile(filepath.Join(Dir(data), h+".json"))
	os.WriteFile(filepath.Join(Dir(data), h2+".json"), []byte(strings.ReplaceAll(string(b), h, h2)), 0o600)
	if _, err := Check(data, h2, s.Public); !errors.Is(err, ErrNotApproved) {
		t.Fatalf("tampered: %v", err)
	}
	l, err := List(data, s.Public)
	if err != nil || len(l) != 2 {
		t.Fatalf("list: %v %+v", err, l)
	}
	valid := 0
	for _, e := range l {
		if e.Valid {
			valid++
		}
	}
	if valid != 1 {
		t.Fatalf("valid entries: %d", valid)
	}
	if _, err := Approve(data, "nothex", "x", s, time.Now()); err == nil {
		t.Fatal("bad hash approved")
	}
}

func TestRequired(t *testing.T) {
	none := func(string) (string, bool) { return "", false }
	on := func(k string) (string, bool) { return "1", k == RequireEnv }
	if Required("standard", none) || !Required("restrictive", none) || !Required("standard", on) {
		t.Fatal("Required")
	}
}
