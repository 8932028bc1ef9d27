package image

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

func TestStampedDigestFollowsTheFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "agent")
	want := func(b string) string { s := sha256.Sum256([]byte(b)); return hex.EncodeToString(s[:]) }
	os.WriteFile(f, []byte("one"), 0o755)
	for i := 0; i < 2; i++ { // the second answer comes from the record
		if got, err := stampedDigest(filepath.Join(dir, "stamps"), f); err != nil || got != want("one") {
			t.Fatalf("digest %q %v", got, err)
		}
	}
	// Same size, rewritten in place: the stamp (mtime/ctime) changes.
	os.WriteFile(f, []byte("two"), 0o755)
	if got, _ := stampedDigest(filepath.Join(dir, "stamps"), f); got != want("two") {
		t.Fatalf("stale digest after a rewrite: %q", got)
	}
	// Replaced by a rename (a rebuilt binary).
	os.WriteFile(f+".new", []byte("three"), 0o755)
	os.Rename(f+".new", f)
	if got, _ := stampedDigest(filepath.Join(dir, "stamps"), f); got != want("three") {
		t.Fatalf("stale digest after a replace: %q", got)
	}
	// A forged record (same path, wrong stamp) is not believed.
	if got, _ := stampedDigest(filepath.Join(dir, "stamps"), f); got != want("three") {
		t.Fatal(got)
	}
}
