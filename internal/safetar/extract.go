package safetar

import (
	"archive/tar"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Extract extracts a tar stream (as Write makes it) at dest. When dest is an
// existing directory, the top-level member lands in it as o.Name (see
// Options); otherwise dest's parent must be an existing directory and the
// top-level member lands as base(dest). An existing directory of that name
// receives the tree (files in it are replaced); an existing file or
// symlink is replaced.
//
// Every member must sit under one top-level name. Refused: absolute names,
// "..", empty or over-long names, members reached through a symlink,
// sparse files, and streams over MaxBytes, MaxMembers or MaxDepth.
// Symlinks are created as symlinks whatever their target and never
// followed. Hard links, devices, fifos and sockets are skipped and counted.
func Extract(r io.Reader, dest string, o Options) (*Stats, error) {
	if o.MaxMembers == 0 {
		o.MaxMembers = DefaultMaxMembers
	}
	dest = filepath.Clean(dest)
	dir, name := dest, o.Name
	if fi, err := os.Stat(dest); err != nil || !fi.IsDir() {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, osErr(err, dest)
		}
		dir, name = filepath.Dir(dest), filepath.Base(dest)
		pfi, err := os.Stat(dir)
		if err != nil {
			return nil, osErr(err, dir)
		}
		if !pfi.IsDir() {
			return nil, errorf(syscall.ENOTDIR, dir, "not a directory")
		}
	}
	if name != "" {
		if c, err := components(name); err != nil || len(c) != 1 || c[0] != name {
			return nil, errorf(syscall.EINVAL, name, "the destination name must be one path component")
		}
	}
	tail := &tailReader{r: r}
	x := &extractor{o: o, st: &Stats{}, name: name, tr: tar.NewReader(tail), buf: make([]byte, 256<<10)}
	defer x.closeAll()
	h, comps, err := x.next()
	if err != nil {
		return x.st, err
	}
	if h == nil {
		return x.st, errorf(syscall.ENOENT, dest, "the archive was empty")
	}
	if x.name == "" {
		x.name = comps[0]
	}
	x.st.Root = filepath.Join(dir, x.name)

	root, err := os.OpenRoot(dir)
	if err != nil {
		return x.st, osErr(err, dir)
	}
	defer root.Close()
	// Stage inside the target when it is an existing directory (the tree
	// is merged into it), beside it otherwise: either way on the file
	// system the tree ends up on, so that moving it into place is a rename.
	base, merge := root, false
	if fi, err := root.Lstat(x.name); err == nil && fi.IsDir() {
		if base, err = root.OpenRoot(x.name); err != nil {
			return x.st, osErr(err, x.st.Root)
		}
		defer base.Close()
		merge = true
	}
	staging, err := mkStaging(base)
	if err != nil {
		return x.st, err
	}
	err = x.run(base, staging, h, comps)
	if err == nil {
		err = tail.end()
	}
	if err == nil {
		top := staging + "/" + x.name
		if merge {
			err = mergeTree(base, top)
		} else {
			err = place(root, top, x.name)
		}
	}
	if rerr := base.RemoveAll(staging); err == nil && rerr != nil {
		err = osErr(rerr, filepath.Join(base.Name(), staging))
	}
	return x.st, err
}

// tailReader keeps the last bytes the tar reader consumed, so that the end
// of the archive can be told from a stream cut at a member boundary (which
// archive/tar also reports as io.EOF).
type tailReader struct {
	r    io.Reader
	tail [1024]byte
	n    int
}

func (t *tailReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if k := len(t.tail); n >= k {
		copy(t.tail[:], p[n-k:n])
	} else {
		copy(t.tail[:], t.tail[n:])
		copy(t.tail[k-n:], p[:n])
	}
	t.n += n
	return n, err
}

// maxTrailing caps what may follow the end of the archive (tar pads to
// records of up to 10 KiB; more is not an archive).
const maxTrailing = 1 << 20

// end checks that the archive ended with its end marker (two zero blocks)
// and that the stream then ends cleanly: an error from the sender after
// the last member (the guest failing late) fails the extraction.
func (t *tailReader) end() error {
	if t.n < len(t.tail) || t.tail != [len(t.tail)]byte{} {
		return errorf(io.ErrUnexpectedEOF, "", "the archive ended without its end marker: the stream was cut short")
	}
	n, err := io.Copy(io.Discard, io.LimitReader(t.r, maxTrailing+1))
	if err != nil {
		return fmt.Errorf("read archive: %w", err)
	}
	if n > maxTrailing {
		return errorf(ErrTooLarge, "", "more than %d bytes follow the end of the archive", maxTrailing)
	}
	return nil
}

// mkStaging creates a fresh, private directory in root.
func mkStaging(root *os.Root) (string, error) {
	for i := 0; ; i++ {
		var b [8]byte
		rand.Read(b[:])
		name := stagingPrefix + hex.EncodeToString(b[:]) + ".partial"
		err := root.Mkdir(name, 0o700)
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, fs.ErrExist) || i >= 8 {
			return "", osErr(err, filepath.Join(root.Name(), name))
		}
	}
}

// components validates an archive member name and splits it.
func components(name string) ([]string, error) {
	if name == "" || len(name) > MaxNameBytes || strings.IndexByte(name, 0) >= 0 {
		return nil, errorf(ErrUnsafe, "", "archive member with an empty, over-long or NUL-containing name")
	}
	if strings.HasPrefix(name, "/") {
		return nil, errorf(ErrUnsafe, name, "archive member with an absolute name; refused")
	}
	var comps []string
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return nil, errorf(ErrUnsafe, name, "archive member climbs out with \"..\"; refused")
		}
		comps = append(comps, c)
	}
	if len(comps) == 0 {
		return nil, errorf(ErrUnsafe, name, "archive member with an empty name")
	}
	return comps, nil
}

func isSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// level is one directory of the path being written: the stack of levels
// is the only state that lives across members.
type level struct {
	name  string
	r     *os.Root
	meta  bool // a directory member gave mode and mtime
	mode  fs.FileMode
	mtime time.Time
}

type extractor struct {
	o       Options
	st      *Stats
	tr      *tar.Reader
	buf     []byte
	name    string // the top-level name in the destination
	top     string // the stream's top-level name
	members int
	stack   []level // stack[0] is the staging directory
}

// next reads the next member header and validates its name; nil at the end.
func (x *extractor) next() (*tar.Header, []string, error) {
	for {
		h, err := x.tr.Next()
		if err == io.EOF {
			return nil, nil, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read archive: %w", err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if x.members++; x.members > x.o.MaxMembers {
			return nil, nil, errorf(ErrTooLarge, "", "archive has more than %d members", x.o.MaxMembers)
		}
		comps, err := components(h.Name)
		if err != nil {
			return nil, nil, err
		}
		if x.top == "" {
			x.top = comps[0]
		} else if comps[0] != x.top {
			return nil, nil, errorf(ErrUnsafe, h.Name, "archive has more than one top-level member (%q and %q); refused", x.top, comps[0])
		}
		if len(comps) > MaxDepth {
			return nil, nil, errorf(ErrTooLarge, h.Name, "archive member deeper than %d directories", MaxDepth)
		}
		if isSparse(h) {
			return nil, nil, errorf(ErrUnsafe, h.Name, "sparse archive member; refused")
		}
		return h, comps, nil
	}
}

// run writes every member below staging/name, starting with h.
func (x *extractor) run(base *os.Root, staging string, h *tar.Header, comps []string) error {
	sr, err := base.OpenRoot(staging)
	if err != nil {
		return osErr(err, staging)
	}
	x.stack = []level{{r: sr}}
	for h != nil {
		comps[0] = x.name
		if err := x.member(h, comps); err != nil {
			return err
		}
		if h, comps, err = x.next(); err != nil {
			return err
		}
	}
	for len(x.stack) > 1 {
		if err := x.pop(); err != nil {
			return err
		}
	}
	return nil
}

func (x *extractor) member(h *tar.Header, comps []string) error {
	rel := strings.Join(comps, "/")
	switch h.Typeflag {
	case tar.TypeDir:
		if err := x.enter(comps); err != nil {
			return err
		}
		l := &x.stack[len(x.stack)-1]
		l.meta, l.mode, l.mtime = true, x.mode(h.Mode, true), h.ModTime
		x.st.Dirs++
	case tar.TypeReg:
		if x.o.MaxBytes > 0 && x.st.Bytes+h.Size > x.o.MaxBytes {
			return errorf(ErrTooLarge, rel, "the copy exceeds the limit of %d bytes", x.o.MaxBytes)
		}
		if err := x.enter(comps[:len(comps)-1]); err != nil {
			return err
		}
		return x.file(comps[len(comps)-1], rel, h)
	case tar.TypeSymlink:
		t := h.Linkname
		if t == "" || len(t) > MaxNameBytes || strings.IndexByte(t, 0) >= 0 {
			return errorf(ErrUnsafe, rel, "symlink with an empty, over-long or NUL-containing target")
		}
		if err := x.enter(comps[:len(comps)-1]); err != nil {
			return err
		}
		return x.symlink(comps[len(comps)-1], rel, h)
	default:
		// Hard links, devices, fifos: never created from a stream.
		x.st.Skipped++
	}
	return nil
}

// mode is the mode a member gets: clamped unless KeepModes.
func (x *extractor) mode(m int64, dir bool) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if x.o.KeepModes {
		if m&0o4000 != 0 {
			mode |= fs.ModeSetuid
		}
		if m&0o2000 != 0 {
			mode |= fs.ModeSetgid
		}
		if m&0o1000 != 0 {
			mode |= fs.ModeSticky
		}
		return mode
	}
	mode &= 0o755
	if dir {
		mode |= 0o700
	}
	return mode
}

// enter makes the stack the directory path (relative to staging), leaving
// the directories that are not on it and creating missing ones. A path
// component that exists as a symlink is refused: nothing is written
// through one.
func (x *extractor) enter(path []string) error {
	k := 0
	for k < len(path) && k+1 < len(x.stack) && x.stack[k+1].name == path[k] {
		k++
	}
	for len(x.stack) > k+1 {
		if err := x.pop(); err != nil {
			return err
		}
	}
	for i := k; i < len(path); i++ {
		c, rel := path[i], strings.Join(path[:i+1], "/")
		parent := x.stack[len(x.stack)-1].r
		fi, err := parent.Lstat(c)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := parent.Mkdir(c, 0o755); err != nil {
				return osErr(err, rel)
			}
		case err != nil:
			return osErr(err, rel)
		case fi.Mode()&fs.ModeSymlink != 0:
			return errorf(ErrUnsafe, rel, "archive member goes through a symlink; refused")
		case !fi.IsDir():
			return errorf(syscall.ENOTDIR, rel, "exists and is not a directory")
		}
		sub, err := parent.OpenRoot(c)
		if err != nil {
			return osErr(err, rel)
		}
		x.stack = append(x.stack, level{name: c, r: sub})
	}
	return nil
}

// pop leaves the deepest directory, giving it its mode and time now that
// nothing more is written in it.
func (x *extractor) pop() error {
	l := x.stack[len(x.stack)-1]
	x.stack = x.stack[:len(x.stack)-1]
	defer l.r.Close()
	if !l.meta {
		return nil
	}
	if err := l.r.Chmod(".", l.mode); err != nil {
		return osErr(err, l.name)
	}
	l.r.Chtimes(".", l.mtime, l.mtime)
	return nil
}

func (x *extractor) closeAll() {
	for _, l := range x.stack {
		l.r.Close()
	}
	x.stack = nil
}

// clear removes a file or symlink at name so that a member can take its
// place; a directory there is an error.
func clear(d *os.Root, name, rel string) error {
	fi, err := d.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return osErr(err, rel)
	}
	if fi.IsDir() {
		return errorf(syscall.EISDIR, rel, "is a directory; cannot replace it with a file or symlink")
	}
	return osErr(d.Remove(name), rel)
}

// fileWriter remembers write errors (the reader's are the stream's) and
// hides ReadFrom so that io.CopyBuffer uses the extractor's buffer.
type fileWriter struct {
	f   *os.File
	err error
}

func (w *fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

func (x *extractor) file(name, rel string, h *tar.Header) error {
	d := x.stack[len(x.stack)-1].r
	if err := clear(d, name, rel); err != nil {
		return err
	}
	f, err := d.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return osErr(err, rel)
	}
	defer f.Close()
	w := &fileWriter{f: f}
	n, err := io.CopyBuffer(w, io.LimitReader(x.tr, h.Size), x.buf)
	x.st.Bytes += n
	switch {
	case w.err != nil:
		return osErr(w.err, rel)
	case err != nil:
		return fmt.Errorf("read archive: %s: %w", rel, err)
	case n != h.Size:
		return fmt.Errorf("read archive: %s: %w", rel, io.ErrUnexpectedEOF)
	}
	if err := f.Chmod(x.mode(h.Mode, false)); err != nil {
		return osErr(err, rel)
	}
	if c, err := f.SyscallConn(); err == nil {
		tv := unix.NsecToTimeval(h.ModTime.UnixNano())
		c.Control(func(fd uintptr) { unix.Futimes(int(fd), []unix.Timeval{tv, tv}) })
	}
	if err := f.Close(); err != nil {
		return osErr(err, rel)
	}
	x.st.Files++
	return nil
}

func (x *extractor) symlink(name, rel string, h *tar.Header) error {
	d := x.stack[len(x.stack)-1].r
	if err := clear(d, name, rel); err != nil {
		return err
	}
	if err := d.Symlink(h.Linkname, name); err != nil {
		return osErr(err, rel)
	}
	// The link's own time: os.Root has no Lchtimes, so through the
	// directory's descriptor.
	if df, err := d.Open("."); err == nil {
		if c, err := df.SyscallConn(); err == nil {
			ts := unix.NsecToTimespec(h.ModTime.UnixNano())
			c.Control(func(fd uintptr) {
				unix.UtimesNanoAt(int(fd), name, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
			})
		}
		df.Close()
	}
	x.st.Symlinks++
	return nil
}
