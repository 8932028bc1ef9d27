package agentapi

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Tar streams (moving to internal/safetar).

// TarStats counts what a tar stream held.
type TarStats struct {
	Files, Dirs, Symlinks, Skipped, Bytes int64
	// Root is where the top-level member landed (extraction only).
	Root string
}

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

// WriteTar writes src (a file, a symlink's target, or a tree) to w as a tar
// stream whose top-level member is named base(src). A symlink given as src
// is followed; symlinks inside the tree are stored as symlinks. Devices,
// fifos and sockets are skipped and counted.
func WriteTar(w io.Writer, src string) (*TarStats, error) {
	src = filepath.Clean(src)
	top := filepath.Base(src)
	if top == "/" || top == "." || top == ".." {
		return nil, fsErrorf(FsInvalidPath, src, "cannot copy the root itself; name a directory below it")
	}
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		return nil, FsErr(err, src)
	}
	if _, err := os.Lstat(real); err != nil {
		return nil, FsErr(err, src)
	}
	st := &TarStats{}
	tw := tar.NewWriter(w)
	buf := make([]byte, 256<<10)
	err = filepath.WalkDir(real, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return FsErr(err, p)
		}
		info, err := d.Info()
		if err != nil {
			return FsErr(err, p)
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
				return FsErr(err, p)
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
			st.Symlinks++
			return tw.WriteHeader(hdr)
		case info.Mode().IsRegular():
			f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
			if err != nil {
				return FsErr(err, p)
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

// ExtractOptions bound and shape an extraction.
type ExtractOptions struct {
	// MaxBytes caps the file bytes extracted (0 = no cap).
	MaxBytes int64
	// MaxMembers caps the members (0 = MaxArchiveMembers).
	MaxMembers int
	// KeepSpecialBits keeps setuid, setgid and sticky bits (guest side
	// only: the host strips them from what a guest sends).
	KeepSpecialBits bool
	// AllowEscapingSymlinks keeps symlinks whose target leaves the copied
	// tree (guest side only: the host refuses them).
	AllowEscapingSymlinks bool
}

// memberComponents validates an archive member name and splits it.
func memberComponents(name string) ([]string, error) {
	if name == "" || len(name) > MaxPathBytes || strings.IndexByte(name, 0) >= 0 {
		return nil, fsErrorf(FsUnsafe, "", "archive member with an empty, over-long or NUL-containing name")
	}
	if strings.HasPrefix(name, "/") {
		return nil, fsErrorf(FsUnsafe, name, "archive member with an absolute name; refused")
	}
	var comps []string
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return nil, fsErrorf(FsUnsafe, name, "archive member climbs out with \"..\"; refused")
		}
		comps = append(comps, c)
	}
	if len(comps) == 0 {
		return nil, fsErrorf(FsUnsafe, name, "archive member with an empty name")
	}
	return comps, nil
}

// extractor writes members below a directory fd without ever following a
// symlink: every component is opened with O_NOFOLLOW relative to its
// parent, and files are created with O_EXCL after removing what was there.
type extractor struct {
	root int
	o    ExtractOptions
	st   *TarStats
	buf  []byte
}

// openDir opens comps below the root as a directory, creating missing
// components when create is set. The caller closes the fd.
func (x *extractor) openDir(comps []string, create bool) (int, error) {
	cur, err := unix.Dup(x.root)
	if err != nil {
		return -1, err
	}
	for i, c := range comps {
		fd, err := unix.Openat(cur, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.ENOENT && create {
			if err = unix.Mkdirat(cur, c, defaultDirMode); err == nil || err == unix.EEXIST {
				fd, err = unix.Openat(cur, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			}
		}
		if err != nil {
			rel := strings.Join(comps[:i+1], "/")
			var s unix.Stat_t
			if (err == unix.ELOOP || err == unix.ENOTDIR) && unix.Fstatat(cur, c, &s, unix.AT_SYMLINK_NOFOLLOW) == nil && s.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = fsErrorf(FsUnsafe, rel, "archive member goes through a symlink; refused")
			} else {
				err = FsErr(err, rel)
			}
			unix.Close(cur)
			return -1, err
		}
		unix.Close(cur)
		cur = fd
	}
	return cur, nil
}

// clear removes what is at name in dir so that a new member can take its
// place; an existing directory is kept only when keepDir is set.
func clearPlace(dir int, name, rel string, keepDir bool) (exists bool, err error) {
	var s unix.Stat_t
	if err := unix.Fstatat(dir, name, &s, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return false, nil
		}
		return false, FsErr(err, rel)
	}
	if s.Mode&unix.S_IFMT == unix.S_IFDIR {
		if keepDir {
			return true, nil
		}
		return true, fsErrorf(FsIsDir, rel, "is a directory; cannot replace it with a file or symlink")
	}
	if keepDir {
		return true, fsErrorf(FsNotDir, rel, "exists and is not a directory")
	}
	if err := unix.Unlinkat(dir, name, 0); err != nil {
		return true, FsErr(err, rel)
	}
	return false, nil
}

func (x *extractor) mode(h *tar.Header) uint32 {
	if x.o.KeepSpecialBits {
		return uint32(h.Mode) & 0o7777
	}
	return uint32(h.Mode) & 0o777
}

func times(t time.Time) []unix.Timespec {
	ts := unix.NsecToTimespec(t.UnixNano())
	return []unix.Timespec{ts, ts}
}

type dirMeta struct {
	comps []string
	mode  uint32
	mtime time.Time
}

// ExtractTar extracts a tar stream written by WriteTar at dest. When dest
// is an existing directory the top-level member lands inside it; otherwise
// dest's parent must exist and the top-level member is renamed to
// base(dest). Every member must sit under one top-level name; absolute
// names, "..", members reached through symlinks, hard links out of the
// tree and (unless allowed) symlinks leaving the tree are refused.
func ExtractTar(r io.Reader, dest string, o ExtractOptions) (*TarStats, error) {
	if o.MaxMembers == 0 {
		o.MaxMembers = MaxArchiveMembers
	}
	dest = filepath.Clean(dest)
	rootDir, rename := dest, ""
	if fi, err := os.Stat(dest); err != nil || !fi.IsDir() {
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, FsErr(err, dest)
		}
		rootDir, rename = filepath.Dir(dest), filepath.Base(dest)
		pfi, err := os.Stat(rootDir)
		if err != nil {
			return nil, FsErr(err, rootDir)
		}
		if !pfi.IsDir() {
			return nil, fsErrorf(FsNotDir, rootDir, "not a directory")
		}
	}
	root, err := unix.Open(rootDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, FsErr(err, rootDir)
	}
	defer unix.Close(root)
	x := &extractor{root: root, o: o, st: &TarStats{}, buf: make([]byte, 256<<10)}
	tr := tar.NewReader(r)
	var top string
	var dirs []dirMeta
	members := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return x.st, fmt.Errorf("read archive: %w", err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if members++; members > o.MaxMembers {
			return x.st, fsErrorf(FsTooLarge, "", "archive has more than %d members", o.MaxMembers)
		}
		comps, err := memberComponents(h.Name)
		if err != nil {
			return x.st, err
		}
		if top == "" {
			top = comps[0]
			x.st.Root = filepath.Join(rootDir, top)
			if rename != "" {
				x.st.Root = filepath.Join(rootDir, rename)
			}
		} else if comps[0] != top {
			return x.st, fsErrorf(FsUnsafe, h.Name, "archive has more than one top-level member (%q and %q); refused", top, comps[0])
		}
		if rename != "" {
			comps[0] = rename
		}
		rel := strings.Join(comps, "/")
		parent, base := comps[:len(comps)-1], comps[len(comps)-1]
		switch h.Typeflag {
		case tar.TypeDir:
			pfd, err := x.openDir(parent, true)
			if err != nil {
				return x.st, err
			}
			if exists, err := clearPlace(pfd, base, rel, true); err != nil {
				unix.Close(pfd)
				return x.st, err
			} else if !exists {
				if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
					unix.Close(pfd)
					return x.st, FsErr(err, rel)
				}
			}
			unix.Close(pfd)
			dirs = append(dirs, dirMeta{comps: comps, mode: x.mode(h), mtime: h.ModTime})
			x.st.Dirs++
		case tar.TypeReg, tar.TypeRegA:
			if o.MaxBytes > 0 && x.st.Bytes+h.Size > o.MaxBytes {
				return x.st, fsErrorf(FsTooLarge, rel, "the copy exceeds the limit of %d bytes", o.MaxBytes)
			}
			if err := x.file(parent, base, rel, h, tr); err != nil {
				return x.st, err
			}
		case tar.TypeSymlink:
			if err := x.symlink(parent, base, rel, h); err != nil {
				return x.st, err
			}
		default:
			// Hard links, devices, fifos: never created from a stream.
			x.st.Skipped++
		}
	}
	if top == "" {
		return x.st, fsErrorf(FsNotFound, dest, "the archive was empty")
	}
	// Directory modes last (deepest first), so read-only dirs can be filled.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		fd, err := x.openDir(d.comps, false)
		if err != nil {
			return x.st, err
		}
		err = unix.Fchmod(fd, d.mode)
		unix.Close(fd)
		if err != nil {
			return x.st, FsErr(err, strings.Join(d.comps, "/"))
		}
		if pfd, err := x.openDir(d.comps[:len(d.comps)-1], false); err == nil {
			unix.UtimesNanoAt(pfd, d.comps[len(d.comps)-1], times(d.mtime), unix.AT_SYMLINK_NOFOLLOW)
			unix.Close(pfd)
		}
	}
	return x.st, nil
}

func (x *extractor) file(parent []string, base, rel string, h *tar.Header, r io.Reader) error {
	pfd, err := x.openDir(parent, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if _, err := clearPlace(pfd, base, rel, false); err != nil {
		return err
	}
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return FsErr(err, rel)
	}
	f := os.NewFile(uintptr(fd), rel)
	n, err := io.CopyBuffer(onlyWriter{f}, io.LimitReader(r, h.Size), x.buf)
	if err == nil && n != h.Size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EFBIG) || errors.Is(err, syscall.EDQUOT) {
			return FsErr(err, rel)
		}
		return fmt.Errorf("write %s: %w", rel, err)
	}
	if err := f.Chmod(fs.FileMode(x.mode(h) & 0o777)); err != nil {
		f.Close()
		return FsErr(err, rel)
	}
	if x.mode(h)&0o7000 != 0 {
		unix.Fchmod(fd, x.mode(h))
	}
	if err := f.Close(); err != nil {
		return FsErr(err, rel)
	}
	unix.UtimesNanoAt(pfd, base, times(h.ModTime), unix.AT_SYMLINK_NOFOLLOW)
	x.st.Files++
	x.st.Bytes += n
	return nil
}

func (x *extractor) symlink(parent []string, base, rel string, h *tar.Header) error {
	target := h.Linkname
	if target == "" || len(target) > MaxPathBytes || strings.IndexByte(target, 0) >= 0 {
		return fsErrorf(FsUnsafe, rel, "symlink with an empty, over-long or NUL-containing target")
	}
	if !x.o.AllowEscapingSymlinks {
		top := base
		if len(parent) > 0 {
			top = parent[0]
		}
		joined := path.Join(path.Dir(rel), target)
		if path.IsAbs(target) || len(parent) == 0 || !climbsThenDescends(target) ||
			(joined != top && !strings.HasPrefix(joined, top+"/")) {
			return fsErrorf(FsUnsafe, rel, "symlink to %q leaves the copied tree; refused", target)
		}
	}
	pfd, err := x.openDir(parent, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if _, err := clearPlace(pfd, base, rel, false); err != nil {
		return err
	}
	if err := unix.Symlinkat(target, pfd, base); err != nil {
		return FsErr(err, rel)
	}
	unix.UtimesNanoAt(pfd, base, times(h.ModTime), unix.AT_SYMLINK_NOFOLLOW)
	x.st.Symlinks++
	return nil
}

// climbsThenDescends reports whether a relative symlink target is a run of
// ".." followed only by names. The ".." part then climbs through real
// directories (a member's parents are never symlinks), so the lexical
// result is the real one; the names part descends, through symlinks that
// were themselves checked the same way. A ".." after a name could climb out
// of a symlinked directory, so it is refused.
func climbsThenDescends(target string) bool {
	descending := false
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
		case "..":
			if descending {
				return false
			}
		default:
			descending = true
		}
	}
	return true
}

// onlyWriter hides ReadFrom so that io.CopyBuffer uses our buffer.
type onlyWriter struct{ w io.Writer }

func (w onlyWriter) Write(p []byte) (int, error) { return w.w.Write(p) }
