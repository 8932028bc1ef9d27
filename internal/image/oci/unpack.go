package oci

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
)

// Caps on what the layers of one image may unpack to.
const (
	// DefaultMaxBytes caps the file bytes of all layers together.
	DefaultMaxBytes int64 = 32 << 30
	// DefaultMaxEntries caps the tar members of all layers together.
	DefaultMaxEntries = 4 << 20
	maxName           = 4096
	whiteoutPrefix    = ".wh."
	opaqueMarker      = ".wh..wh..opq"
)

// ErrUnsafeLayer is wrapped by every refusal of a layer member (an
// absolute name, "..", a sparse file, a write through a symlink that leads
// out of the root, a tree over a cap).
var ErrUnsafeLayer = errors.New("unsafe layer member")

// Unpacker applies image layers, in order, onto a root directory. Every
// write goes through an os.Root, so no member reaches outside the root
// whatever symlinks earlier members made; the final component of a path is
// never followed (an existing entry is removed first).
type Unpacker struct {
	root     *os.Root
	MaxBytes int64
	MaxItems int
	bytes    int64
	items    int
	// Skipped counts device nodes, fifos and sockets (not unpacked).
	Skipped int
}

// NewUnpacker opens dir (an existing, empty directory) as the root.
func NewUnpacker(dir string) (*Unpacker, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &Unpacker{root: r, MaxBytes: DefaultMaxBytes, MaxItems: DefaultMaxEntries}, nil
}

// Close releases the root.
func (u *Unpacker) Close() error { return u.root.Close() }

func unsafef(name, format string, args ...any) error {
	return fmt.Errorf("%w %q: %s", ErrUnsafeLayer, name, fmt.Sprintf(format, args...))
}

// memberPath validates a member name and returns it relative to the root
// ("" is the root itself).
func memberPath(name string) (string, error) {
	if len(name) > maxName || strings.ContainsRune(name, 0) {
		return "", unsafef(name[:min(len(name), 64)], "name too long or with NUL")
	}
	n := strings.TrimPrefix(name, "./")
	if path.IsAbs(n) {
		return "", unsafef(name, "absolute name")
	}
	for _, c := range strings.Split(n, "/") {
		if c == ".." {
			return "", unsafef(name, `".." in the name`)
		}
	}
	c := path.Clean(n)
	if c == "." {
		return "", nil
	}
	return c, nil
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

// Layer applies one uncompressed layer. Whiteouts (".wh.NAME") remove NAME
// from the layers below; an opaque marker (".wh..wh..opq") hides
// everything the layers below put in its directory.
func (u *Unpacker) Layer(r io.Reader) error {
	tr := tar.NewReader(r)
	written := map[string]bool{}
	var opaque []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read layer: %w", err)
		}
		u.items++
		if u.items > u.MaxItems {
			return unsafef(h.Name, "more than %d members", u.MaxItems)
		}
		p, err := memberPath(h.Name)
		if err != nil {
			return err
		}
		dir, base := path.Split(p)
		dir = strings.TrimSuffix(dir, "/")
		if base == opaqueMarker {
			opaque = append(opaque, dir)
			continue
		}
		if strings.HasPrefix(base, whiteoutPrefix) {
			target := path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix))
			if err := u.root.RemoveAll(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("whiteout %s: %w", target, err)
			}
			continue
		}
		if p == "" {
			if h.Typeflag == tar.TypeDir {
				if err := u.meta(".", h); err != nil {
					return err
				}
			}
			continue
		}
		if isSparse(h) {
			return unsafef(h.Name, "sparse file")
		}
		if err := u.member(tr, p, dir, h); err != nil {
			return err
		}
		written[p] = true
		for d := dir; d != ""; d = parent(d) {
			written[d] = true
		}
	}
	sort.Strings(opaque)
	for _, d := range opaque {
		if err := u.clearBelow(d, written); err != nil {
			return fmt.Errorf("opaque directory %s: %w", d, err)
		}
	}
	return nil
}

func parent(p string) string {
	d := path.Dir(p)
	if d == "." {
		return ""
	}
	return d
}

// clearBelow removes what is in dir and was not written by this layer.
func (u *Unpacker) clearBelow(dir string, keep map[string]bool) error {
	d := dir
	if d == "" {
		d = "."
	}
	f, err := u.root.Open(d)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	ents, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := path.Join(dir, e.Name())
		if !keep[p] {
			if err := u.root.RemoveAll(p); err != nil {
				return err
			}
			continue
		}
		if e.IsDir() {
			if err := u.clearBelow(p, keep); err != nil {
				return err
			}
		}
	}
	return nil
}

// mkParents creates the member's missing parent directories (0755, root's).
func (u *Unpacker) mkParents(dir string) error {
	if dir == "" {
		return nil
	}
	if err := u.root.MkdirAll(dir, 0o755); err != nil {
		return unsafef(dir, "parent directory: %v", err)
	}
	return nil
}

// clear removes what is at p unless it is a directory and keepDir.
func (u *Unpacker) clear(p string, keepDir bool) error {
	fi, err := u.root.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return unsafef(p, "%v", err)
	}
	if fi.IsDir() && keepDir {
		return nil
	}
	return u.root.RemoveAll(p)
}

func (u *Unpacker) member(tr *tar.Reader, p, dir string, h *tar.Header) error {
	if err := u.mkParents(dir); err != nil {
		return err
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if err := u.clear(p, true); err != nil {
			return err
		}
		if err := u.root.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return unsafef(p, "%v", err)
		}
		return u.meta(p, h)
	case tar.TypeReg, tar.TypeRegA:
		if h.Size < 0 || h.Size > u.MaxBytes-u.bytes {
			return unsafef(p, "file of %d bytes: the image would unpack to more than %d bytes", h.Size, u.MaxBytes)
		}
		if err := u.clear(p, false); err != nil {
			return err
		}
		f, err := u.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return unsafef(p, "%v", err)
		}
		n, err := io.Copy(f, io.LimitReader(tr, h.Size))
		u.bytes += n
		if err == nil && n != h.Size {
			err = io.ErrUnexpectedEOF
		}
		if err == nil {
			err = f.Chown(h.Uid, h.Gid)
		}
		if err == nil {
			err = f.Chmod(fileMode(h.Mode))
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		return nil
	case tar.TypeSymlink:
		if len(h.Linkname) > maxName || strings.ContainsRune(h.Linkname, 0) {
			return unsafef(p, "bad symlink target")
		}
		if err := u.clear(p, false); err != nil {
			return err
		}
		if err := u.root.Symlink(h.Linkname, p); err != nil {
			return unsafef(p, "%v", err)
		}
		return u.root.Lchown(p, h.Uid, h.Gid)
	case tar.TypeLink:
		target, err := memberPath(h.Linkname)
		if err != nil || target == "" {
			return unsafef(p, "hard link to %q", h.Linkname)
		}
		fi, err := u.root.Lstat(target)
		if err != nil {
			return unsafef(p, "hard link to %q: %v", h.Linkname, err)
		}
		if fi.IsDir() {
			return unsafef(p, "hard link to a directory")
		}
		if err := u.clear(p, false); err != nil {
			return err
		}
		if err := u.root.Link(target, p); err != nil {
			return unsafef(p, "hard link: %v", err)
		}
		return nil
	default:
		// devices, fifos, sockets: the guest's /dev is devtmpfs
		u.Skipped++
		return nil
	}
}

// meta gives a directory its mode and owner.
func (u *Unpacker) meta(p string, h *tar.Header) error {
	if err := u.root.Lchown(p, h.Uid, h.Gid); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if err := u.root.Chmod(p, fileMode(h.Mode)); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

// fileMode keeps the permission and set-id/sticky bits of a tar mode.
func fileMode(m int64) fs.FileMode {
	out := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		out |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= fs.ModeSticky
	}
	return out
}
