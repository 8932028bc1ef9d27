package atomicfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/testenv"
)

func TestWriteFileReplacesWithMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.json")
	for _, content := range []string{"one", "two"} {
		if err := WriteFile(p, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(p)
		if b, _ := os.ReadFile(p); err != nil || string(b) != content || st.Mode().Perm() != 0o640 {
			t.Fatalf("%q %v %v", b, st.Mode(), err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("leftovers: %v", ents)
	}
}

// A write that fails half-way (the disk is full) leaves the old file as it
// was and no temporary file beside it.
func TestFailedWriteLeavesOldFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	if err := WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	restore := testenv.LimitFileSize(t, 16)
	err := WriteFile(p, bytes.Repeat([]byte("n"), 4096), 0o600)
	restore()
	if !errors.Is(err, syscall.EFBIG) {
		t.Fatalf("want EFBIG, got %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("old content lost: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temporary file left behind: %v", ents)
	}
}

// A rename that fails (a directory stands at the final name) removes the
// temporary file.
func TestFailedRenameLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	q := filepath.Join(dir, "d")
	os.Mkdir(q, 0o755)
	os.WriteFile(filepath.Join(q, "x"), nil, 0o644)
	if err := WriteFile(q, []byte("new"), 0o600); err == nil {
		t.Fatal("rename over a non-empty directory succeeded")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temporary file left behind: %v", ents)
	}
}

// CommitNew never replaces: the first creator's file stays.
func TestCommitNewKeepsExisting(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	for i, content := range []string{"first", "second"} {
		tmp, err := CreateTemp(dir, ".key-*")
		if err != nil {
			t.Fatal(err)
		}
		tmp.WriteString(content)
		created, err := tmp.CommitNew(p, 0o600)
		tmp.Abort()
		if err != nil || created != (i == 0) {
			t.Fatalf("%s: created %v, %v", content, created, err)
		}
	}
	st, _ := os.Stat(p)
	if b, _ := os.ReadFile(p); string(b) != "first" || st.Mode().Perm() != 0o600 {
		t.Fatalf("%q %v", b, st.Mode())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("leftovers: %v", ents)
	}
}
