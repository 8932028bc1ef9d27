package caplog

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestCapAndRotate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	w, err := Create(path, 100)
	if err != nil {
		t.Fatal(err)
	}
	var all bytes.Buffer
	for i := 0; i < 1000; i++ {
		line := []byte{byte('a' + i%26), '\n'}
		all.Write(line)
		if n, err := w.Write(line); n != 2 || err != nil {
			t.Fatal(n, err)
		}
	}
	big := bytes.Repeat([]byte("z"), 350)
	all.Write(big)
	w.Write(big)
	w.Close()
	cur, _ := os.ReadFile(path)
	old, _ := os.ReadFile(path + Old)
	if len(cur) > 100 || len(old) != 100 {
		t.Fatalf("sizes %d %d", len(cur), len(old))
	}
	// The two generations are the end of what was written, in order.
	if got := append(old, cur...); !bytes.HasSuffix(all.Bytes(), got) {
		t.Fatal("the kept bytes are not the tail of the stream")
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
}
