// Package atomicfile replaces files so that a reader, or the file system
// after a crash, sees either the old content or the whole new content:
// write a temporary file beside the final name, fsync it, rename it into
// place, fsync the directory. It is the one implementation every package
// that writes state, evidence, keys or cache metadata uses.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Temp is a file being written beside its final name. Commit makes it
// durable and renames it into place; Abort (safe after Commit) removes it.
type Temp struct {
	*os.File
	done bool
}

// CreateTemp creates a temporary file in dir, which must exist (pattern is
// as for os.CreateTemp). Keep it on the same file system as the final
// name: the rename is what makes the replacement atomic.
func CreateTemp(dir, pattern string) (*Temp, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &Temp{File: f}, nil
}

// Commit sets perm, flushes the file to disk, renames it to final and
// flushes final's directory, so that after a crash final is either the old
// file or complete. On failure the temporary file is removed and final is
// untouched.
func (t *Temp) Commit(final string, perm fs.FileMode) error {
	if t.done {
		return errors.New("atomicfile: temp file already committed or aborted")
	}
	t.done = true
	name := t.Name()
	err := t.Chmod(perm)
	if err == nil {
		err = t.Sync()
	}
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, final)
	}
	if err != nil {
		os.Remove(name)
		return fmt.Errorf("write %s: %w", final, err)
	}
	return SyncDir(filepath.Dir(final))
}

// CommitNew is Commit for a file that must not be replaced: it links the
// temporary file to final only when final does not exist yet, so of two
// concurrent creators one wins and the other keeps the winner's file (and
// neither ever sees a half-written one). created reports which happened.
func (t *Temp) CommitNew(final string, perm fs.FileMode) (created bool, err error) {
	if t.done {
		return false, errors.New("atomicfile: temp file already committed or aborted")
	}
	t.done = true
	name := t.Name()
	defer os.Remove(name)
	err = t.Chmod(perm)
	if err == nil {
		err = t.Sync()
	}
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("write %s: %w", final, err)
	}
	if err := os.Link(name, final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, fmt.Errorf("write %s: %w", final, err)
	}
	return true, SyncDir(filepath.Dir(final))
}

// Abort closes and removes the temporary file unless it was committed.
func (t *Temp) Abort() {
	if t.done {
		return
	}
	t.done = true
	t.Close()
	os.Remove(t.Name())
}

// WriteFile replaces p atomically with data, with mode perm. p's directory
// must exist.
func WriteFile(p string, data []byte, perm fs.FileMode) error {
	t, err := CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp-*")
	if err != nil {
		return err
	}
	defer t.Abort()
	if _, err := t.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return t.Commit(p, perm)
}

// SyncDir flushes a directory's entries (a rename into it) to disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
