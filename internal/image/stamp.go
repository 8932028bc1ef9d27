package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/mvm-sandbox/mvm/internal/image/cache"
)

// fileStamp identifies one version of a file without reading it: a write,
// a replacement (rename) or a touch changes the inode, size, mtime or
// ctime, and ctime cannot be set back by the file's owner.
type fileStamp struct {
	Dev, Ino    uint64
	Size        int64
	Mtime, Ctim int64
}

func stampOf(fi os.FileInfo) (fileStamp, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStamp{}, false
	}
	return fileStamp{Dev: uint64(st.Dev), Ino: st.Ino, Size: fi.Size(),
		Mtime: st.Mtim.Nano(), Ctim: st.Ctim.Nano()}, true
}

type stampRecord struct {
	Path   string    `json:"path"`
	Stamp  fileStamp `json:"stamp"`
	SHA256 string    `json:"sha256"`
}

// stampedDigest is the hex sha256 of path, remembered in dir under the
// file's stamp: it is read and hashed again only when the stamp changed.
func stampedDigest(dir, path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", err
	}
	stamp, ok := stampOf(fi)
	key := sha256.Sum256([]byte(abs))
	rec := filepath.Join(dir, hex.EncodeToString(key[:16])+".json")
	if ok {
		var r stampRecord
		if b, err := os.ReadFile(rec); err == nil && json.Unmarshal(b, &r) == nil &&
			r.Path == abs && r.Stamp == stamp && len(r.SHA256) == 64 {
			return r.SHA256, nil
		}
	}
	f, err := os.Open(abs)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	// Remember it only when the file did not change while it was read.
	if fi2, err := f.Stat(); err == nil && ok {
		if s2, _ := stampOf(fi2); s2 == stamp {
			b, _ := json.Marshal(stampRecord{Path: abs, Stamp: stamp, SHA256: sum})
			cache.WriteFile(rec, b, cache.FileMode) // best effort
		}
	}
	return sum, nil
}

// stampedSums are the digests of spec's agent and busybox.
func stampedSums(dir string, spec InitramfsSpec) (inputSums, error) {
	if spec.Agent == "" {
		return inputSums{}, errors.New("initramfs: no agent binary given")
	}
	var s inputSums
	var err error
	if s.agent, err = stampedDigest(dir, spec.Agent); err != nil {
		return s, fmt.Errorf("initramfs: read agent: %w", err)
	}
	if spec.Busybox != "" {
		if s.busybox, err = stampedDigest(dir, spec.Busybox); err != nil {
			return s, fmt.Errorf("initramfs: read busybox: %w", err)
		}
	}
	return s, nil
}
