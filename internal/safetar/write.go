package safetar

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

// Write writes src (a file, a symlink's target, or a tree) to w as a tar
// stream whose top-level member is named base(src). A symlink given as src
// is followed; symlinks inside the tree are stored as symlinks, whatever
// their target. Devices, fifos and sockets are skipped and counted.
func Write(w io.Writer, src string) (*Stats, error) {
	src = filepath.Clean(src)
	top := filepath.Base(src)
	if top == "/" || top == "." || top == ".." {
		return nil, errorf(syscall.EINVAL, src, "cannot copy the root itself; name a directory below it")
	}
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		return nil, osErr(err, src)
	}
	if _, err := os.Lstat(real); err != nil {
		return nil, osErr(err, src)
	}
	st := &Stats{}
	tw := tar.NewWriter(w)
	buf := make([]byte, 256<<10)
	err = filepath.WalkDir(real, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return osErr(err, p)
		}
		info, err := d.Info()
		if err != nil {
			return osErr(err, p)
		}
		name := top + filepath.ToSlash(strings.TrimPrefix(p, real))
		hdr := &tar.Header{Name: name, Mode: tarMode(info.Mode()), ModTime: info.ModTime().Truncate(time.Second)}
		switch {
		case info.Mode().IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
			st.Dirs++
			return tw.WriteHeader(hdr)
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return osErr(err, p)
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
			st.Symlinks++
			return tw.WriteHeader(hdr)
		case info.Mode().IsRegular():
			f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
			if err != nil {
				return osErr(err, p)
			}
			defer f.Close()
			hdr.Typeflag, hdr.Size = tar.TypeReg, info.Size()
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			n, err := io.CopyBuffer(tw, io.LimitReader(f, info.Size()), buf)
			if err != nil {
				return fmt.Errorf("copy %s: %w", p, err)
			}
			if n != info.Size() {
				return fmt.Errorf("copy %s: the file shrank while it was copied (%d of %d bytes)", p, n, info.Size())
			}
			st.Files++
			st.Bytes += n
			return nil
		default:
			st.Skipped++
			return nil
		}
	})
	if err != nil {
		return st, err
	}
	return st, tw.Close()
}
