// Package cache is the one way artifacts enter the cache directory
// (kernels, initramfs archives, root filesystem trees and images): the
// modes they get, atomic file writes that reach the disk (fsync of the file
// and of its directory), one exclusive lock per key, and publishing a
// staged file or directory with a rename.
//
// The build-once protocol every artifact follows is Once: look up, take
// the key's lock, look up again (someone may have built it meanwhile),
// make it in a private work directory, publish with a rename.
package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"
	"github.com/mvm-sandbox/mvm/internal/atomicfile"
)

// Modes of everything created in the cache. They are the single place to
// change who may read the cache: only its owner. Artifacts hold what a
// manifest put there (env values, the copied /work tree), so the cache is
// private like the state and data directories.
const (
	DirMode  fs.FileMode = 0o700
	FileMode fs.FileMode = 0o600
)

// Secure makes the cache root private (mode 0700) when it exists with any
// group or other permission, as caches made before the modes above were.
// Everything beneath is then out of other users' reach whatever its own
// mode. It creates nothing.
func Secure(root string) error {
	st, err := os.Stat(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.IsDir() && st.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(root, DirMode); err != nil {
			return fmt.Errorf("make the cache %s private: %w", root, err)
		}
	}
	return nil
}

// lockRetry is how often a waiting Lock tries again.
const lockRetry = 50 * time.Millisecond

// Temp is a file being written beside its final name (atomicfile.Temp).
type Temp = atomicfile.Temp

// CreateTemp creates a temporary file in dir (made with DirMode when
// missing). pattern is as for os.CreateTemp.
func CreateTemp(dir, pattern string) (*Temp, error) {
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return nil, err
	}
	return atomicfile.CreateTemp(dir, pattern)
}

// WriteFile replaces p atomically with data, with mode perm; p's directory
// is created (DirMode) when missing.
func WriteFile(p string, data []byte, perm fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(p), DirMode); err != nil {
		return err
	}
	return atomicfile.WriteFile(p, data, perm)
}

// SyncDir flushes a directory's entries (a rename into it) to disk.
func SyncDir(dir string) error { return atomicfile.SyncDir(dir) }

// Lock takes the exclusive lock at path (created with FileMode), waiting
// until it is free or ctx ends. The returned func releases it.
func Lock(ctx context.Context, path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), DirMode); err != nil {
		return nil, err
	}
	l := flock.New(path, flock.SetPermissions(FileMode))
	ok, err := l.TryLockContext(ctx, lockRetry)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("wait for lock %s: %w", filepath.Base(path), ctx.Err())
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if !ok {
		return nil, fmt.Errorf("lock %s: not acquired", path)
	}
	return func() { l.Unlock() }, nil
}

// Once returns what lookup finds, or else builds it under the lock at
// lockPath: lookup runs again once the lock is held, because another
// process may have made it while this one waited. refresh skips both
// lookups (build runs whatever the cache holds). The bool reports a cache
// hit.
func Once[T any](ctx context.Context, lockPath string, refresh bool, lookup func() (T, bool), build func() (T, error)) (T, bool, error) {
	if !refresh {
		if v, ok := lookup(); ok {
			return v, true, nil
		}
	}
	unlock, err := Lock(ctx, lockPath)
	if err != nil {
		var zero T
		return zero, false, err
	}
	defer unlock()
	if !refresh {
		if v, ok := lookup(); ok {
			return v, true, nil
		}
	}
	v, err := build()
	return v, false, err
}

// PublishDir renames the staged directory to final. When final already
// exists and keep says it is good, it stays, staged is left where it is and
// PublishDir returns false. Otherwise a leftover final (incomplete, or
// being replaced) is first renamed to aside, a path on the same file system
// that the caller deletes (builds still using the old tree hold hard links
// to it). keep may be nil: an existing final is always replaced.
func PublishDir(staged, final, aside string, keep func(string) bool) (bool, error) {
	if err := os.MkdirAll(filepath.Dir(final), DirMode); err != nil {
		return false, err
	}
	if _, err := os.Lstat(final); err == nil {
		if keep != nil && keep(final) {
			return false, nil
		}
		if err := os.Rename(final, aside); err != nil {
			return false, fmt.Errorf("move aside %s: %w", final, err)
		}
	}
	if err := os.Rename(staged, final); err != nil {
		if keep != nil && keep(final) {
			// a concurrent publisher won the race
			return false, nil
		}
		return false, fmt.Errorf("publish %s: %w", final, err)
	}
	return true, SyncDir(filepath.Dir(final))
}
