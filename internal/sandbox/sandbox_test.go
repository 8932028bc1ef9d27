package sandbox

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/testenv"
)

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "agent-dev", "0x", strings.Repeat("a", 40)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "A", "a_b", "a/b", "..", strings.Repeat("a", 41), "a b"} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestReserveResolveRelease(t *testing.T) {
	l := Layout{Root: t.TempDir()}
	if err := l.Reserve("dev", "aaaa11112222"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reserve("dev", "bbbb11112222"); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("second reservation: %v", err)
	}
	// Resolve needs the directory to exist.
	if _, ok := l.Resolve("dev"); ok {
		t.Fatal("resolved a name whose sandbox has no directory")
	}
	os.MkdirAll(l.Dir("aaaa11112222"), 0o700)
	WriteJSON(filepath.Join(l.Dir("aaaa11112222"), StateFile), State{ID: "aaaa11112222"})
	if id, ok := l.Resolve("dev"); !ok || id != "aaaa11112222" {
		t.Fatalf("resolve by name: %q %v", id, ok)
	}
	if id, ok := l.Resolve("aaaa11112222"); !ok || id != "aaaa11112222" {
		t.Fatalf("resolve by id: %q %v", id, ok)
	}
	if _, ok := l.Resolve("../sb/aaaa11112222"); ok {
		t.Fatal("resolved a path")
	}
	l.Release("dev", "bbbb11112222") // not its owner: no effect
	if _, err := os.Lstat(l.NameLink("dev")); err != nil {
		t.Fatal("release by another id removed the name")
	}
	l.Release("dev", "aaaa11112222")
	if _, err := os.Lstat(l.NameLink("dev")); err == nil {
		t.Fatal("name still reserved")
	}
}

func TestDialInLongPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	os.MkdirAll(dir, 0o700)
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	os.Chdir(dir) // listen relative, as the supervisor does
	l, err := net.Listen("unix", ControlSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Chdir(wd)
	if len(filepath.Join(dir, ControlSocket)) < 108 {
		t.Fatal("test path is not long enough to matter")
	}
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := DialIn(context.Background(), dir, ControlSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 2)
	if _, err := c.Read(b); err != nil || string(b) != "hi" {
		t.Fatalf("read %q %v", b, err)
	}
}

func TestProcessAlive(t *testing.T) {
	if !ProcessAlive(os.Getpid(), "") {
		t.Fatal("this process is not alive")
	}
	if ProcessAlive(os.Getpid(), "no-such-tag-in-cmdline") {
		t.Fatal("a pid whose command line lacks the tag counts as alive")
	}
	if ProcessAlive(0, "") || ProcessAlive(-1, "") {
		t.Fatal("invalid pids alive")
	}
}

// A state file whose rewrite fails half-way (the disk filled up) keeps its
// old content, and nothing is left beside it: WriteJSON goes through
// atomicfile (temp file, fsync, rename). The old code left its partial
// temporary file in the sandbox directory.
func TestWriteJSONFailureKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, StateFile)
	if err := WriteJSON(p, map[string]string{"status": "running"}); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(p)
	restore := testenv.LimitFileSize(t, 16)
	err := WriteJSON(p, map[string]string{"status": strings.Repeat("x", 4096)})
	restore()
	if err == nil {
		t.Fatal("a write past the file size limit succeeded")
	}
	if b, _ := os.ReadFile(p); string(b) != string(old) {
		t.Fatalf("old content lost: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("left behind: %v", ents)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
}
