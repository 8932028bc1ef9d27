package safetar

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// Moving a fully extracted tree from its staging directory into place.

// place moves src to dst in root: dst is missing, or a file or symlink that
// src replaces (rename never follows a symlink at dst).
func place(root *os.Root, src, dst string) error {
	sfi, err := root.Lstat(src)
	if err != nil {
		return osErr(err, dst)
	}
	tfi, err := root.Lstat(dst)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return osErr(err, dst)
	}
	if err == nil {
		if err := conflict(sfi.IsDir(), tfi, dst); err != nil {
			return err
		}
	}
	return osErr(root.Rename(src, dst), dst)
}

// conflict says why an entry (a directory or not) cannot take the place of
// what is at rel; nil when it can.
func conflict(srcIsDir bool, t fs.FileInfo, rel string) error {
	switch {
	case srcIsDir && !t.IsDir():
		return errorf(syscall.ENOTDIR, rel, "exists and is not a directory; cannot copy a directory over it")
	case !srcIsDir && t.IsDir():
		return errorf(syscall.EISDIR, rel, "is a directory; cannot replace it with a file or symlink")
	}
	return nil
}

// mergeTree merges the directory src (relative to root) into root itself:
// first a pass that changes nothing and finds every conflict, then the
// moves, so that a conflict leaves the destination as it was.
func mergeTree(root *os.Root, src string) error {
	fi, err := root.Lstat(src)
	if err != nil {
		return osErr(err, src)
	}
	if !fi.IsDir() {
		return errorf(syscall.EISDIR, root.Name(), "is a directory; cannot replace it with a file or symlink")
	}
	if err := check(root, src, "."); err != nil {
		return err
	}
	return merge(root, src, ".")
}

func join(dir, name string) string {
	if dir == "." {
		return name
	}
	return dir + "/" + name
}

// check reports the first entry below src that cannot take its place
// below dst. Directories are read in batches: memory does not grow with
// their size.
func check(root *os.Root, src, dst string) error {
	d, err := root.Open(src)
	if err != nil {
		return osErr(err, src)
	}
	defer d.Close()
	for {
		ents, rerr := d.ReadDir(256)
		for _, e := range ents {
			t := join(dst, e.Name())
			tfi, err := root.Lstat(t)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return osErr(err, t)
			}
			if e.IsDir() && tfi.IsDir() {
				if err := check(root, join(src, e.Name()), t); err != nil {
					return err
				}
				continue
			}
			if err := conflict(e.IsDir(), tfi, t); err != nil {
				return err
			}
		}
		if rerr == io.EOF || (rerr == nil && len(ents) == 0) {
			return nil
		}
		if rerr != nil {
			return osErr(rerr, src)
		}
	}
}

// merge moves every entry of src into dst, recursing where both are
// directories, then gives dst src's mode and time and removes src. Each
// batch of entries leaves src before the next is read.
func merge(root *os.Root, src, dst string) error {
	for {
		d, err := root.Open(src)
		if err != nil {
			return osErr(err, src)
		}
		ents, rerr := d.ReadDir(256)
		d.Close()
		if rerr != nil && rerr != io.EOF {
			return osErr(rerr, src)
		}
		if len(ents) == 0 {
			break
		}
		for _, e := range ents {
			s, t := join(src, e.Name()), join(dst, e.Name())
			tfi, err := root.Lstat(t)
			switch {
			case errors.Is(err, fs.ErrNotExist):
			case err != nil:
				return osErr(err, t)
			case e.IsDir() && tfi.IsDir():
				if err := merge(root, s, t); err != nil {
					return err
				}
				continue
			default:
				if err := conflict(e.IsDir(), tfi, t); err != nil {
					return err
				}
			}
			if err := root.Rename(s, t); err != nil {
				return osErr(err, t)
			}
		}
	}
	fi, err := root.Lstat(src)
	if err != nil {
		return osErr(err, src)
	}
	// Through a root opened on dst, so that "." is the directory itself
	// and no symlink is followed.
	dr, err := root.OpenRoot(dst)
	if err != nil {
		return osErr(err, dst)
	}
	err = dr.Chmod(".", fi.Mode())
	dr.Chtimes(".", fi.ModTime(), fi.ModTime())
	dr.Close()
	if err != nil {
		return osErr(err, dst)
	}
	return osErr(root.Remove(src), src)
}
