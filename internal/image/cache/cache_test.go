package cache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestWriteFileModeContentAndNoLeftovers(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "index.json")
	for _, mode := range []os.FileMode{0o644, 0o600} {
		if err := WriteFile(p, []byte("v"+mode.String()), mode); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Fatalf("mode %v, want %v", st.Mode().Perm(), mode)
		}
		if b, _ := os.ReadFile(p); string(b) != "v"+mode.String() {
			t.Fatalf("content %q", b)
		}
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Fatalf("leftovers beside the file: %v", ents)
	}
}

func TestWriteFileFailureLeavesOldContent(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("old"), FileMode); err != nil {
		t.Fatal(err)
	}
	// A directory where the file should go: the rename fails.
	q := filepath.Join(dir, "d")
	os.Mkdir(q, 0o755)
	os.WriteFile(filepath.Join(q, "x"), nil, 0o644)
	if err := WriteFile(q, []byte("new"), FileMode); err == nil {
		t.Fatal("rename over a non-empty directory succeeded")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("temp file left behind: %v", ents)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("content %q", b)
	}
}

func TestTempAbortAfterCommitKeepsFile(t *testing.T) {
	dir := t.TempDir()
	tmp, err := CreateTemp(dir, ".tmp-*")
	if err != nil {
		t.Fatal(err)
	}
	tmp.WriteString("x")
	final := filepath.Join(dir, "final")
	if err := tmp.Commit(final, 0o600); err != nil {
		t.Fatal(err)
	}
	tmp.Abort()
	if err := tmp.Commit(final, 0o600); err == nil {
		t.Fatal("second commit accepted")
	}
	if b, err := os.ReadFile(final); err != nil || string(b) != "x" {
		t.Fatalf("%q %v", b, err)
	}
	tmp2, _ := CreateTemp(dir, ".tmp-*")
	tmp2.Abort()
	if _, err := os.Stat(tmp2.Name()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("aborted temp file still there: %v", err)
	}
}

func TestLockExcludesAndHonoursContext(t *testing.T) {
	p := filepath.Join(t.TempDir(), "locks", "k.lock")
	unlock, err := Lock(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan error, 1)
	go func() {
		_, err := Lock(ctx, p)
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("second Lock returned while the first is held: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	unlock()
	unlock2, err := Lock(context.Background(), p)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	unlock2()
}

func TestOnceBuildsOnceAcrossCallers(t *testing.T) {
	dir := t.TempDir()
	var built atomic.Int32
	var mu sync.Mutex
	var value string
	lookup := func() (string, bool) {
		mu.Lock()
		defer mu.Unlock()
		return value, value != ""
	}
	build := func() (string, error) {
		built.Add(1)
		mu.Lock()
		value = "made"
		mu.Unlock()
		return "made", nil
	}
	var wg sync.WaitGroup
	hits := atomic.Int32{}
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, hit, err := Once(context.Background(), filepath.Join(dir, "k.lock"), false, lookup, build)
			if err != nil || v != "made" {
				t.Errorf("%q %v", v, err)
			}
			if hit {
				hits.Add(1)
			}
		}()
	}
	wg.Wait()
	if built.Load() != 1 || hits.Load() != 7 {
		t.Fatalf("built %d times, %d hits", built.Load(), hits.Load())
	}
	// refresh builds again whatever the cache holds
	if _, hit, _ := Once(context.Background(), filepath.Join(dir, "k.lock"), true, lookup, build); hit || built.Load() != 2 {
		t.Fatalf("refresh: hit %v, built %d", hit, built.Load())
	}
}

func TestOnceBuildErrorIsReturned(t *testing.T) {
	boom := errors.New("boom")
	_, _, err := Once(context.Background(), filepath.Join(t.TempDir(), "k.lock"), false,
		func() (int, bool) { return 0, false }, func() (int, error) { return 0, boom })
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
}

func TestPublishDir(t *testing.T) {
	root := t.TempDir()
	stage := func(content string) string {
		d, _ := os.MkdirTemp(root, "stage-")
		os.WriteFile(filepath.Join(d, "f"), []byte(content), 0o644)
		return d
	}
	final := filepath.Join(root, "cache", "key")
	read := func() string { b, _ := os.ReadFile(filepath.Join(final, "f")); return string(b) }
	good := func(p string) bool { _, err := os.Stat(filepath.Join(p, "f")); return err == nil }

	if ok, err := PublishDir(stage("one"), final, filepath.Join(root, "aside1"), good); !ok || err != nil || read() != "one" {
		t.Fatalf("first publish: %v %v %q", ok, err, read())
	}
	// a good final is kept
	s2 := stage("two")
	if ok, err := PublishDir(s2, final, filepath.Join(root, "aside2"), good); ok || err != nil || read() != "one" {
		t.Fatalf("publish over a good final: %v %v %q", ok, err, read())
	}
	if _, err := os.Stat(s2); err != nil {
		t.Fatal("the unpublished stage should stay for its owner to delete")
	}
	// a broken final is moved aside and replaced
	os.Remove(filepath.Join(final, "f"))
	if ok, err := PublishDir(stage("three"), final, filepath.Join(root, "aside3"), good); !ok || err != nil || read() != "three" {
		t.Fatalf("replace broken: %v %v %q", ok, err, read())
	}
	if _, err := os.Stat(filepath.Join(root, "aside3")); err != nil {
		t.Fatalf("broken final not moved aside: %v", err)
	}
	// keep == nil always replaces (refresh)
	if ok, err := PublishDir(stage("four"), final, filepath.Join(root, "aside4"), nil); !ok || err != nil || read() != "four" {
		t.Fatalf("refresh: %v %v %q", ok, err, read())
	}
}

// TestCacheNotWorldReadable is issue 11 item 15: what the cache creates is
// its owner's only (0700 directories, 0600 files), and an existing cache
// root left readable by older versions is made private.
func TestCacheNotWorldReadable(t *testing.T) {
	root := filepath.Join(t.TempDir(), "mvm")
	p := filepath.Join(root, "images", "abc", "artifact.json")
	if err := WriteFile(p, []byte("{}"), FileMode); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{p: 0o600, filepath.Dir(p): 0o700, filepath.Join(root, "images"): 0o700} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v (%v)", path, st.Mode().Perm(), want, err)
		}
	}
	old := filepath.Join(t.TempDir(), "old-cache")
	os.MkdirAll(old, 0o755)
	os.Chmod(old, 0o755)
	if err := Secure(old); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(old); st.Mode().Perm() != 0o700 {
		t.Errorf("old cache root: %v", st.Mode().Perm())
	}
	if err := Secure(filepath.Join(t.TempDir(), "missing")); err != nil {
		t.Errorf("missing root: %v", err)
	}
}
