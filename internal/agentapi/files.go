package agentapi

import (
	"archive/tar"
	"bufio"
	"context"
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

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FsKind is the typed reason of a failed file operation.
type FsKind = pb.FsError_Kind

// File error kinds, re-exported for callers that do not import agentpb.
const (
	FsUnknown      = pb.FsError_UNKNOWN
	FsNotFound     = pb.FsError_NOT_FOUND
	FsPermission   = pb.FsError_PERMISSION_DENIED
	FsExists       = pb.FsError_EXISTS
	FsNotDir       = pb.FsError_NOT_A_DIRECTORY
	FsIsDir        = pb.FsError_IS_A_DIRECTORY
	FsNotEmpty     = pb.FsError_NOT_EMPTY
	FsTooLarge     = pb.FsError_TOO_LARGE
	FsInvalidPath  = pb.FsError_INVALID_PATH
	FsUnsafe       = pb.FsError_UNSAFE
	FsRefused      = pb.FsError_REFUSED
	sealedRefusal  = "refused by the image profile \"sealed\": it allows reading files (read, ls, stat, cp out) but not changing them"
	defaultDirMode = 0o755
)

var kindText = map[FsKind]string{
	FsNotFound:    "no such file or directory",
	FsPermission:  "permission denied",
	FsExists:      "already exists",
	FsNotDir:      "not a directory",
	FsIsDir:       "is a directory",
	FsNotEmpty:    "directory not empty",
	FsTooLarge:    "too large",
	FsInvalidPath: "invalid path",
	FsUnsafe:      "unsafe path",
	FsRefused:     "refused",
}

var kindCode = map[FsKind]codes.Code{
	FsNotFound:    codes.NotFound,
	FsPermission:  codes.PermissionDenied,
	FsExists:      codes.AlreadyExists,
	FsNotDir:      codes.FailedPrecondition,
	FsIsDir:       codes.FailedPrecondition,
	FsNotEmpty:    codes.FailedPrecondition,
	FsTooLarge:    codes.ResourceExhausted,
	FsInvalidPath: codes.InvalidArgument,
	FsUnsafe:      codes.InvalidArgument,
	FsRefused:     codes.FailedPrecondition,
}

// FsError is a typed file error. On the agent it becomes a gRPC status
// with a pb.FsError detail; on the host it comes from the local extractor.
type FsError struct {
	Kind   FsKind
	Path   string
	Detail string // optional, replaces the generic text of Kind
	Err    error
}

func (e *FsError) Error() string {
	msg := e.Detail
	if msg == "" {
		msg = kindText[e.Kind]
		if msg == "" && e.Err != nil {
			msg = e.Err.Error()
		}
	}
	if e.Path == "" {
		return msg
	}
	return e.Path + ": " + msg
}

func (e *FsError) Unwrap() error { return e.Err }

// GRPCStatus makes an FsError travel as a status with its kind attached.
func (e *FsError) GRPCStatus() *status.Status {
	code, ok := kindCode[e.Kind]
	if !ok {
		code = codes.Internal
	}
	st := status.New(code, e.Error())
	if d, err := st.WithDetails(&pb.FsError{Kind: e.Kind, Path: e.Path}); err == nil {
		return d
	}
	return st
}

// fsErrorf builds a typed error with a specific message.
func fsErrorf(kind FsKind, p string, format string, args ...any) *FsError {
	return &FsError{Kind: kind, Path: p, Detail: fmt.Sprintf(format, args...)}
}

// FsErr turns an OS error about p into a typed FsError (nil stays nil,
// errors that already carry a kind are returned as they are).
func FsErr(err error, p string) error {
	if err == nil {
		return nil
	}
	var fe *FsError
	if errors.As(err, &fe) {
		return err
	}
	if _, ok := status.FromError(err); ok && !isErrno(err) {
		return err
	}
	kind := FsUnknown
	switch {
	case errors.Is(err, syscall.ENOENT):
		kind = FsNotFound
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		kind = FsPermission
	case errors.Is(err, syscall.EEXIST):
		kind = FsExists
	case errors.Is(err, syscall.ENOTDIR):
		kind = FsNotDir
	case errors.Is(err, syscall.EISDIR):
		kind = FsIsDir
	case errors.Is(err, syscall.ENOTEMPTY):
		kind = FsNotEmpty
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EFBIG), errors.Is(err, syscall.EDQUOT):
		return &FsError{Kind: FsTooLarge, Path: p, Detail: "no space left (or file too large)", Err: err}
	case errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ELOOP):
		kind = FsInvalidPath
	}
	if kind == FsUnknown {
		var pe *fs.PathError
		msg := err.Error()
		if errors.As(err, &pe) {
			msg = pe.Op + ": " + pe.Err.Error()
		}
		return &FsError{Kind: kind, Path: p, Detail: msg, Err: err}
	}
	return &FsError{Kind: kind, Path: p, Err: err}
}

func isErrno(err error) bool {
	var errno syscall.Errno
	return errors.As(err, &errno)
}

// KindOf reports the file error kind of err: from a local FsError, from the
// FsError detail of an agent status, or from the status code.
func KindOf(err error) FsKind {
	if err == nil {
		return FsUnknown
	}
	var fe *FsError
	if errors.As(err, &fe) {
		return fe.Kind
	}
	st, ok := status.FromError(err)
	if !ok {
		return FsUnknown
	}
	for _, d := range st.Details() {
		if f, ok := d.(*pb.FsError); ok {
			return f.Kind
		}
	}
	switch st.Code() {
	case codes.NotFound:
		return FsNotFound
	case codes.PermissionDenied:
		return FsPermission
	case codes.AlreadyExists:
		return FsExists
	case codes.ResourceExhausted:
		return FsTooLarge
	}
	return FsUnknown
}

// RefusedSealed is the error a sealed image gives for a file change.
func RefusedSealed(p string) error {
	return &FsError{Kind: FsRefused, Path: p, Detail: sealedRefusal}
}

// CleanGuestPath validates a guest path: absolute, no NUL, bounded. It
// returns the cleaned path.
func CleanGuestPath(p string) (string, error) {
	switch {
	case p == "":
		return "", fsErrorf(FsInvalidPath, p, "empty path")
	case len(p) > MaxPathBytes:
		return "", fsErrorf(FsInvalidPath, p[:64]+"...", "path longer than %d bytes", MaxPathBytes)
	case strings.IndexByte(p, 0) >= 0:
		return "", fsErrorf(FsInvalidPath, "", "path contains a NUL byte")
	case !strings.HasPrefix(p, "/"):
		return "", fsErrorf(FsInvalidPath, p, "guest paths must be absolute (start with /)")
	}
	return path.Clean(p), nil
}

// ---- chunked byte streams over gRPC ----

type chunkWriter struct{ send func([]byte) error }

func (w chunkWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += ChunkBytes {
		end := min(off+ChunkBytes, len(p))
		if err := w.send(p[off:end]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// NewChunkWriter returns a buffered writer that sends chunks of at most
// ChunkBytes with send (which must not keep the slice). Flush it at the end.
func NewChunkWriter(send func([]byte) error) *bufio.Writer {
	return bufio.NewWriterSize(chunkWriter{send}, ChunkBytes)
}

type chunkReader struct {
	recv func() ([]byte, error)
	buf  []byte
	err  error
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		r.buf, r.err = r.recv()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// NewChunkReader reads the concatenated chunks that recv returns until it
// returns an error (io.EOF at the end).
func NewChunkReader(recv func() ([]byte, error)) io.Reader { return &chunkReader{recv: recv} }

// ---- tar streams ----

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

// ---- host-side client helpers ----

// ReadFile streams a guest file to w and returns its info and the bytes
// written.
func (c *Client) ReadFile(ctx context.Context, p string, w io.Writer) (*pb.FileInfo, int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.ReadFile(ctx, &pb.ReadFileRequest{Path: p})
	if err != nil {
		return nil, 0, err
	}
	var info *pb.FileInfo
	var n int64
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return info, n, nil
		}
		if err != nil {
			return info, n, err
		}
		switch v := m.Msg.(type) {
		case *pb.ReadFileOutput_Info:
			info = v.Info
		case *pb.ReadFileOutput_Data:
			k, err := w.Write(v.Data)
			n += int64(k)
			if err != nil {
				return info, n, fmt.Errorf("write output: %w", err)
			}
		}
	}
}

// WriteFile streams r into a guest file described by hdr.
func (c *Client) WriteFile(ctx context.Context, hdr *pb.WriteFileHeader, r io.Reader) (*pb.WriteFileResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.WriteFile(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&pb.WriteFileInput{Msg: &pb.WriteFileInput_Header{Header: hdr}}); err != nil && err != io.EOF {
		return nil, err
	}
	buf := make([]byte, ChunkBytes)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if err := stream.Send(&pb.WriteFileInput{Msg: &pb.WriteFileInput_Data{Data: buf[:n]}}); err != nil {
				if err == io.EOF {
					break // the agent failed: CloseAndRecv has its reason
				}
				return nil, err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return nil, fmt.Errorf("read input: %w", rerr)
		}
	}
	return stream.CloseAndRecv()
}

// CopyIn copies the host path src (a file or a tree) to dst in the guest.
func (c *Client) CopyIn(ctx context.Context, src, dst string) (*pb.ArchiveInResponse, *TarStats, error) {
	if _, err := os.Stat(src); err != nil {
		return nil, nil, FsErr(err, src)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.ArchiveIn(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := stream.Send(&pb.ArchiveInInput{Msg: &pb.ArchiveInInput_Header{Header: &pb.ArchiveInHeader{Path: dst}}}); err != nil && err != io.EOF {
		return nil, nil, err
	}
	msg := &pb.ArchiveInInput{}
	data := &pb.ArchiveInInput_Data{}
	msg.Msg = data
	w := NewChunkWriter(func(p []byte) error {
		data.Data = p
		return stream.Send(msg)
	})
	st, werr := WriteTar(w, src)
	if werr == nil {
		werr = w.Flush()
	}
	if werr != nil && !errors.Is(werr, io.EOF) {
		return nil, st, werr
	}
	resp, err := stream.CloseAndRecv()
	return resp, st, err
}

// CopyOut copies the guest path src (a file or a tree) to dst on the host.
// Everything the guest sends is checked: see ExtractTar.
func (c *Client) CopyOut(ctx context.Context, src, dst string, o ExtractOptions) (*TarStats, error) {
	o.KeepSpecialBits, o.AllowEscapingSymlinks = false, false
	// What the copy creates; removed again when the copy fails and it did
	// not exist before, so a refused stream leaves nothing behind.
	target := dst
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		target = filepath.Join(dst, path.Base(path.Clean(src)))
	}
	_, lerr := os.Lstat(target)
	created := errors.Is(lerr, os.ErrNotExist)
	st, err := c.copyOut(ctx, src, dst, o)
	if err != nil && created {
		os.RemoveAll(target)
	}
	return st, err
}

func (c *Client) copyOut(ctx context.Context, src, dst string, o ExtractOptions) (*TarStats, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.ArchiveOut(ctx, &pb.ArchiveOutRequest{Path: src})
	if err != nil {
		return nil, err
	}
	r := NewChunkReader(func() ([]byte, error) {
		m, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		return m.Data, nil
	})
	st, err := ExtractTar(r, dst, o)
	if err != nil {
		return st, err
	}
	// The stream must end cleanly: a late agent error still counts.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return st, err
	}
	return st, nil
}

// ProcWait streams a background process's output to stdout and stderr
// from the offsets in req. gap, when set, hears of output that left the
// bounded buffer before it was read. It returns the last message: an exit
// or, with NoFollow, the running process.
func (c *Client) ProcWait(ctx context.Context, req *pb.ProcWaitRequest, stdout, stderr io.Writer, gap func(*pb.OutputGap)) (*pb.ProcOutput, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.ProcWait(ctx, req)
	if err != nil {
		return nil, err
	}
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return nil, errors.New("agent closed the output stream without an exit status")
		}
		if err != nil {
			return nil, err
		}
		switch v := m.Msg.(type) {
		case *pb.ProcOutput_Stdout:
			if _, err := stdout.Write(v.Stdout); err != nil {
				return nil, fmt.Errorf("write stdout: %w", err)
			}
		case *pb.ProcOutput_Stderr:
			if _, err := stderr.Write(v.Stderr); err != nil {
				return nil, fmt.Errorf("write stderr: %w", err)
			}
		case *pb.ProcOutput_Gap:
			if gap != nil {
				gap(v.Gap)
			}
		case *pb.ProcOutput_Exit, *pb.ProcOutput_Running:
			return m, nil
		}
	}
}

// ProcStdin copies r to a background process's stdin; closeAfter closes
// its stdin at EOF.
func (c *Client) ProcStdin(ctx context.Context, handle string, r io.Reader, closeAfter bool) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.ProcStdin(ctx)
	if err != nil {
		return 0, err
	}
	send := func(m *pb.ProcStdinInput) bool { return stream.Send(m) == nil }
	if send(&pb.ProcStdinInput{Msg: &pb.ProcStdinInput_Handle{Handle: handle}}) {
		buf := make([]byte, ChunkBytes)
		for {
			n, rerr := r.Read(buf)
			if n > 0 && !send(&pb.ProcStdinInput{Msg: &pb.ProcStdinInput_Data{Data: buf[:n]}}) {
				break
			}
			if rerr == io.EOF {
				if closeAfter {
					send(&pb.ProcStdinInput{Msg: &pb.ProcStdinInput_Close{Close: true}})
				}
				break
			}
			if rerr != nil {
				return 0, fmt.Errorf("read input: %w", rerr)
			}
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return 0, err
	}
	return resp.Bytes, nil
}

// Discard sends n bytes that the agent drops: the raw channel baseline.
func (c *Client) Discard(ctx context.Context, n int64) (int64, error) {
	stream, err := c.Agent.Discard(ctx)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, ChunkBytes)
	msg := &pb.DataChunk{}
	for sent := int64(0); sent < n; {
		k := min(int64(len(buf)), n-sent)
		msg.Data = buf[:k]
		if err := stream.Send(msg); err != nil {
			break
		}
		sent += k
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return 0, err
	}
	return resp.Bytes, nil
}

// Zeros receives n zero bytes from the agent and drops them.
func (c *Client) Zeros(ctx context.Context, n int64) (int64, error) {
	stream, err := c.Agent.Zeros(ctx, &pb.ZerosRequest{Bytes: n})
	if err != nil {
		return 0, err
	}
	var got int64
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got += int64(len(m.Data))
	}
}
