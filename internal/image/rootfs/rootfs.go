// Package rootfs makes guest root filesystem trees and packs them into
// ext4 images.
//
// A tree is a directory holding a complete guest root filesystem. Debian
// trees come from mmdebstrap (variant minbase, packages from the signed
// Debian mirror only); the minimal tree is the host's static busybox plus
// one symlink per applet. A tree is packed with `mkfs.ext4 -d` into an image
// sized to its content, and the image is then normalised so that the same
// tree always gives the same bytes (see docs/images.md, "Determinism").
//
// The package knows nothing of the cache or of manifests: internal/image
// decides what to build and where it is kept.
package rootfs

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/image/cache"
	"golang.org/x/sys/unix"
)

// Epoch is the timestamp given to every file the builder itself
// writes (the minimal tree, /work, /etc/mvm/image.json) and to the file
// system's own times, so that images are reproducible. 2024-01-01T00:00:00Z.
const Epoch int64 = 1704067200

// Label is the ext4 volume label of every root filesystem image.
const Label = "mvmroot"

// DefaultDebianMirror and DefaultSecurityMirror are where Debian trees come
// from; MVM_DEBIAN_MIRROR and MVM_DEBIAN_SECURITY_MIRROR override them.
const (
	DefaultDebianMirror   = "http://deb.debian.org/debian"
	DefaultSecurityMirror = "http://deb.debian.org/debian-security"
)

// HostBusybox is where the minimal template takes its busybox from
// (Debian's busybox-static package).
var HostBusybox = "/bin/busybox"

// UnknownPackageError names the packages a Debian suite does not have.
type UnknownPackageError struct {
	Suite    string
	Packages []string
}

func (e *UnknownPackageError) Error() string {
	return fmt.Sprintf("unknown Debian package(s) in %s: %s", e.Suite, strings.Join(e.Packages, ", "))
}

// DpkgExcludes trims documentation, manual pages and translations from
// Debian trees (copyright files are kept).
var DpkgExcludes = []string{
	"path-exclude=/usr/share/doc/*",
	"path-include=/usr/share/doc/*/copyright",
	"path-exclude=/usr/share/man/*",
	"path-exclude=/usr/share/info/*",
	"path-exclude=/usr/share/locale/*",
	"path-include=/usr/share/locale/locale.alias",
	"path-exclude=/usr/share/lintian/*",
}

var (
	unknownPkgRE  = regexp.MustCompile(`Unable to locate package (\S+)`)
	noCandidateRE = regexp.MustCompile(`Package '?([^' ]+)'? has no installation candidate`)
)

// mirrors returns the mirror and security mirror to use.
func mirrors() (string, string) {
	m, s := os.Getenv("MVM_DEBIAN_MIRROR"), os.Getenv("MVM_DEBIAN_SECURITY_MIRROR")
	if m == "" {
		m = DefaultDebianMirror
	}
	if s == "" {
		s = DefaultSecurityMirror
	}
	return m, s
}

// Debootstrap runs mmdebstrap to make a Debian tree at target (which must
// not exist). progress receives mmdebstrap's own progress lines.
func Debootstrap(ctx context.Context, suite string, packages []string, target string, progress func(string)) error {
	if os.Geteuid() != 0 {
		return errors.New("Debian-based templates are built with mmdebstrap --mode=root and need root; the minimal template does not")
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		return errors.New("mmdebstrap not found: apt-get install mmdebstrap")
	}
	mirror, security := mirrors()
	args := []string{"--variant=minbase", "--mode=root", "--format=directory", "--architectures=amd64"}
	for _, o := range DpkgExcludes {
		args = append(args, "--dpkgopt="+o)
	}
	if len(packages) > 0 {
		args = append(args, "--include="+strings.Join(packages, ","))
	}
	args = append(args, suite, target,
		fmt.Sprintf("deb %s %s main", mirror, suite),
		fmt.Sprintf("deb %s %s-updates main", mirror, suite),
		fmt.Sprintf("deb %s %s-security main", security, suite),
	)
	cmd := exec.CommandContext(ctx, "mmdebstrap", args...)
	// mmdebstrap mounts /proc, /sys and /dev inside the target while it
	// works: stop it with SIGTERM so that it unmounts, never with SIGKILL.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 2 * time.Minute
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout = io.Discard
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	var tail []string
	var unknown []string
	seen := map[string]bool{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			tail = append(tail, line)
			if len(tail) > 30 {
				tail = tail[1:]
			}
			for _, re := range []*regexp.Regexp{unknownPkgRE, noCandidateRE} {
				if m := re.FindStringSubmatch(line); m != nil && !seen[m[1]] {
					seen[m[1]] = true
					unknown = append(unknown, m[1])
				}
			}
			if progress != nil && strings.HasPrefix(line, "I: ") {
				progress(strings.TrimPrefix(line, "I: "))
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	err := cmd.Run()
	pw.Close()
	<-done
	if err != nil {
		if len(unknown) > 0 {
			sort.Strings(unknown)
			return &UnknownPackageError{Suite: suite, Packages: unknown}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("mmdebstrap %s failed: %v\n%s", suite, err, strings.Join(tail, "\n"))
	}
	return scrubDebianTree(target)
}

// scrubDebianTree removes what mmdebstrap copies from the host (its
// hostname and resolver configuration) and leaves guest defaults.
func scrubDebianTree(root string) error {
	for name, content := range map[string]string{
		"etc/hostname":    "mvm\n",
		"etc/hosts":       "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/resolv.conf": "",
	} {
		p := filepath.Join(root, name)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "work"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	return os.Chmod(filepath.Join(root, "tmp"), 0o1777|fs.ModeSticky)
}

// CheckStaticBusybox verifies that bin is a static executable (a dynamic
// busybox would not run in a rootfs without its libraries).
func CheckStaticBusybox(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("minimal template needs a static busybox at %s (apt-get install busybox-static): %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the minimal template needs busybox-static (apt-get install busybox-static)", bin)
		}
	}
	return nil
}

// busyboxApplets lists the applet paths ("bin/sh", "usr/bin/env") of a
// busybox binary.
func busyboxApplets(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, bin, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", bin, err)
	}
	var apps []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		c := path.Clean(strings.TrimPrefix(l, "/"))
		if c == "." || strings.HasPrefix(c, "..") || strings.Contains(c, "\x00") {
			return nil, fmt.Errorf("%s --list-full: bad applet path %q", bin, l)
		}
		apps = append(apps, c)
	}
	if len(apps) == 0 {
		return nil, fmt.Errorf("%s --list-full listed no applets", bin)
	}
	sort.Strings(apps)
	return apps, nil
}

// MinimalTree writes the minimal template's tree into root (which must
// exist and be empty).
func MinimalTree(ctx context.Context, root, busybox string) error {
	if err := CheckStaticBusybox(busybox); err != nil {
		return err
	}
	apps, err := busyboxApplets(ctx, busybox)
	if err != nil {
		return err
	}
	dirs := map[string]os.FileMode{
		"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
		"etc": 0o755, "etc/mvm": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755, "run": 0o755,
		"tmp": 0o1777, "root": 0o700, "var": 0o755, "var/tmp": 0o1777, "home": 0o755, "mnt": 0o755,
		"work": 0o755, "lib": 0o755,
	}
	names := make([]string, 0, len(dirs))
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	for _, d := range names {
		p := filepath.Join(root, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(p, modeBits(dirs[d])); err != nil {
			return err
		}
	}
	if err := copyFile(busybox, filepath.Join(root, "bin/busybox"), 0o755); err != nil {
		return err
	}
	for _, a := range apps {
		if a == "bin/busybox" {
			continue
		}
		p := filepath.Join(root, a)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", p); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":    "root:x:0:\nnogroup:x:65534:\n",
		"etc/hostname": "mvm\n",
		"etc/hosts":    "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return SetTimes(root)
}

// modeBits converts permission bits including sticky/setgid to os flags.
func modeBits(m os.FileMode) os.FileMode {
	out := m & 0o777
	if m&0o1000 != 0 {
		out |= os.ModeSticky
	}
	return out
}

// SetTimes sets the access and modification times of root and every
// entry under it (symlinks themselves, not their targets) to Epoch.
func SetTimes(root string) error {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() {
			dirs = append(dirs, p) // after their contents
			return nil
		}
		return SetTime(p)
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := SetTime(dirs[i]); err != nil {
			return err
		}
	}
	return nil
}

func SetTime(p string) error {
	ts := []unix.Timespec{{Sec: Epoch}, {Sec: Epoch}}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, perm)
}

// LinkTree makes dst a copy of the tree src in which regular files are
// hard links (cheap, and the cached tree is never written through: callers
// replace files by unlinking first). Directories, symlinks and device nodes
// are recreated with their metadata.
func LinkTree(ctx context.Context, src, dst string) error {
	out, err := exec.CommandContext(ctx, "cp", "-a", "--link", "--", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("copy tree: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// ResolveInRoot resolves the guest path p against the tree root as if
// root were "/": symlinks among the parent components are followed inside
// the tree (never out of it). The last component is not followed. Missing
// parents are reported as such; callers create them.
func ResolveInRoot(root, p string) (string, error) {
	parts := strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/")
	if len(parts) == 1 && parts[0] == "" {
		return root, nil
	}
	cur := "/"
	hops := 0
	for i := 0; i < len(parts)-1; i++ {
		next := path.Join(cur, parts[i])
		host := filepath.Join(root, next)
		fi, err := os.Lstat(host)
		if errors.Is(err, os.ErrNotExist) {
			cur = next
			continue
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			hops++
			if hops > 40 {
				return "", fmt.Errorf("%s: too many symlinks", p)
			}
			target, err := os.Readlink(host)
			if err != nil {
				return "", err
			}
			var resolved string
			if path.IsAbs(target) {
				resolved = path.Clean(target)
			} else {
				resolved = path.Join(cur, target)
			}
			// re-resolve the remaining path from the link's target
			rest := append(strings.Split(strings.Trim(resolved, "/"), "/"), parts[i+1:]...)
			parts = rest
			cur = "/"
			i = -1
			continue
		}
		if !fi.IsDir() {
			return "", fmt.Errorf("%s: %s is not a directory in the image", p, next)
		}
		cur = next
	}
	return filepath.Join(root, path.Join(cur, parts[len(parts)-1])), nil
}

// MkdirAllInRoot creates the guest directory p (and its parents) inside
// the tree, following symlinks only inside the tree, and returns its host
// path.
func MkdirAllInRoot(root, p string) (string, error) {
	p = path.Clean("/" + p)
	if p == "/" {
		return root, nil
	}
	if _, err := MkdirAllInRoot(root, path.Dir(p)); err != nil {
		return "", err
	}
	host, err := ResolveInRoot(root, p)
	if err != nil {
		return "", err
	}
	fi, err := os.Lstat(host)
	switch {
	case err == nil && fi.IsDir():
		return host, nil
	case err == nil && fi.Mode()&os.ModeSymlink != 0:
		// follow a symlinked directory (like /bin -> usr/bin) in the tree
		resolved, err := ResolveInRoot(root, p+"/x")
		if err != nil {
			return "", err
		}
		d := filepath.Dir(resolved)
		if fi, err := os.Lstat(d); err == nil && fi.IsDir() {
			return d, nil
		} else if err == nil || !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%s: symlink in the image does not lead to a directory", p)
		}
		// a dangling link: create its target, inside the tree
		rel, err := filepath.Rel(root, d)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			return "", fmt.Errorf("%s: symlink leads outside the tree", p)
		}
		return MkdirAllInRoot(root, "/"+filepath.ToSlash(rel))
	case err == nil:
		return "", fmt.Errorf("%s exists in the image and is not a directory", p)
	case errors.Is(err, os.ErrNotExist):
		if err := os.Mkdir(host, 0o755); err != nil {
			return "", err
		}
		return host, nil
	default:
		return "", err
	}
}

// CopyIn copies the host path src (a file or directory, not followed if a
// symlink at the top) to the guest path guest in the tree. Ownership becomes
// root's, set-id bits are dropped, special files are skipped (reported via
// skip). Entries whose path relative to src is listed in exclude are left
// out. Every written entry gets Epoch as its times. It returns the
// number of files and bytes copied.
func CopyIn(root, src, guest string, exclude []string, skip func(string)) (files int, size int64, err error) {
	ex := map[string]bool{}
	for _, e := range exclude {
		ex[path.Clean(e)] = true
	}
	fi, err := os.Lstat(src)
	if err != nil {
		return 0, 0, err
	}
	if fi.IsDir() {
		if _, err := MkdirAllInRoot(root, guest); err != nil {
			return 0, 0, err
		}
	} else if _, err := MkdirAllInRoot(root, path.Dir(guest)); err != nil {
		return 0, 0, err
	}
	var touched []string
	err = filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel != "." && ex[rel] {
			if de.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		g := path.Join(guest, rel)
		info, err := de.Info()
		if err != nil {
			return err
		}
		switch {
		case info.IsDir():
			h, err := MkdirAllInRoot(root, g)
			if err != nil {
				return err
			}
			if err := os.Chmod(h, info.Mode().Perm()); err != nil {
				return err
			}
			touched = append(touched, h)
			return nil
		case info.Mode().IsRegular(), info.Mode()&os.ModeSymlink != 0:
			h, err := ResolveInRoot(root, g)
			if err != nil {
				return err
			}
			if old, err := os.Lstat(h); err == nil && old.IsDir() {
				return fmt.Errorf("%s: a directory in the image is in the way", g)
			}
			if info.Mode().IsRegular() {
				if err := copyFile(p, h, info.Mode().Perm()); err != nil {
					return err
				}
				files++
				size += info.Size()
			} else {
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				if err := os.Remove(h); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
				if err := os.Symlink(target, h); err != nil {
					return err
				}
				files++
			}
			if os.Geteuid() == 0 {
				if err := os.Lchown(h, 0, 0); err != nil {
					return err
				}
			}
			return SetTime(h)
		default:
			if skip != nil {
				skip(rel)
			}
			return nil
		}
	})
	if err != nil {
		return files, size, err
	}
	// directory times last, deepest first (writing into them moved them)
	for i := len(touched) - 1; i >= 0; i-- {
		if os.Geteuid() == 0 {
			if err := os.Lchown(touched[i], 0, 0); err != nil {
				return files, size, err
			}
		}
		if err := SetTime(touched[i]); err != nil {
			return files, size, err
		}
	}
	return files, size, nil
}

// WriteGuestFile replaces the guest file p in the tree with data.
func WriteGuestFile(root, p string, data []byte, perm os.FileMode) error {
	if _, err := MkdirAllInRoot(root, path.Dir(p)); err != nil {
		return err
	}
	h, err := ResolveInRoot(root, p)
	if err != nil {
		return err
	}
	if err := os.Remove(h); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.WriteFile(h, data, perm); err != nil {
		return err
	}
	return SetTime(h)
}

// treeUsage estimates what packing a tree needs: bytes of data blocks
// (4 KiB granularity) and the number of inodes.
func treeUsage(root string) (bytes int64, inodes int64, err error) {
	seen := map[uint64]bool{}
	err = filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 && !info.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		inodes++
		switch {
		case info.IsDir():
			bytes += 4096
		case info.Mode().IsRegular():
			bytes += (info.Size() + 4095) / 4096 * 4096
		case info.Mode()&os.ModeSymlink != 0 && info.Size() >= 60:
			bytes += 4096
		}
		return nil
	})
	return bytes, inodes, err
}

// Pack packs tree into a new ext4 image at img, sized to the content,
// then normalises it (NormalizeExt4). seed gives the file system UUID and
// directory hash seed so the result depends only on the tree.
func Pack(ctx context.Context, tree, img string, seed [16]byte, forceRoot bool) error {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return errors.New("mkfs.ext4 not found: apt-get install e2fsprogs")
	}
	data, inodes, err := treeUsage(tree)
	if err != nil {
		return err
	}
	nInodes := inodes + inodes/5 + 256
	size := data + data/20 + nInodes*128 + 4<<20
	for attempt := 0; ; attempt++ {
		size = (size + 1<<20 - 1) &^ (1<<20 - 1)
		err = mkfs(ctx, tree, img, size, nInodes, seed)
		if err == nil {
			break
		}
		if attempt >= 2 || !strings.Contains(err.Error(), "llocat") && !strings.Contains(err.Error(), "space") {
			return err
		}
		size += size / 2
		nInodes += nInodes / 2
	}
	return NormalizeExt4(img, forceRoot)
}

func uuid(seed [16]byte, variant byte) string {
	u := seed
	u[15] ^= variant
	u[6] = (u[6] & 0x0f) | 0x40
	u[8] = (u[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func mkfs(ctx context.Context, tree, img string, size, inodes int64, seed [16]byte) error {
	_ = os.Remove(img)
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, cache.FileMode)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	args := []string{
		"-q", "-F",
		"-t", "ext4",
		"-d", tree,
		"-L", Label,
		"-U", uuid(seed, 0),
		"-E", "hash_seed=" + uuid(seed, 1) + ",root_owner=0:0,nodiscard,lazy_itable_init=0",
		// no journal (the image is mounted read-only), no metadata
		// checksums (NormalizeExt4 rewrites inode times), 128-byte
		// inodes (no creation times that would differ between runs).
		"-O", "^has_journal,^metadata_csum,^resize_inode",
		"-I", "128",
		"-b", "4096",
		"-m", "0",
		"-N", strconv.FormatInt(inodes, 10),
		img,
	}
	cmd := exec.CommandContext(ctx, "mkfs.ext4", args...)
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(Epoch, 10), "MKE2FS_DEVICE_SECTSIZE=512")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4: %v: %s", err, filterMkfs(out))
	}
	return nil
}

func filterMkfs(out []byte) string {
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if l == "" || strings.Contains(l, "128-byte inodes") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// NormalizeExt4 makes an image's inode times depend only on the tree:
// mke2fs -d copies the source's ctime and atime, which no one can set, so
// both become the inode's mtime. With forceRoot every inode is owned by
// root (used when a non-root user packs the minimal tree). The file system
// must have 128-byte inodes and no metadata checksums (as mkfs makes it).
func NormalizeExt4(img string, forceRoot bool) error {
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return err
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != 0xEF53 {
		return errors.New("normalize: not an ext4 image")
	}
	inodesCount := int64(le.Uint32(sb[0x0:]))
	firstData := int64(le.Uint32(sb[0x14:]))
	blockSize := int64(1024) << le.Uint32(sb[0x18:])
	inodesPerGroup := int64(le.Uint32(sb[0x28:]))
	inodeSize := int64(le.Uint16(sb[0x58:]))
	incompat := le.Uint32(sb[0x60:])
	roCompat := le.Uint32(sb[0x64:])
	if roCompat&0x400 != 0 {
		return errors.New("normalize: image has metadata_csum")
	}
	if inodeSize < 128 || inodesPerGroup == 0 {
		return errors.New("normalize: bad superblock")
	}
	descSize := int64(32)
	if incompat&0x80 != 0 { // 64bit
		descSize = int64(le.Uint16(sb[0xFE:]))
		if descSize < 32 {
			descSize = 32
		}
	}
	groups := (inodesCount + inodesPerGroup - 1) / inodesPerGroup
	gdt := make([]byte, groups*descSize)
	if _, err := f.ReadAt(gdt, (firstData+1)*blockSize); err != nil {
		return err
	}
	table := make([]byte, inodesPerGroup*inodeSize)
	for g := int64(0); g < groups; g++ {
		d := gdt[g*descSize : (g+1)*descSize]
		if le.Uint16(d[0x12:])&0x1 != 0 { // INODE_UNINIT
			continue
		}
		itable := int64(le.Uint32(d[0x8:]))
		if descSize >= 64 {
			itable |= int64(le.Uint32(d[0x28:])) << 32
		}
		off := itable * blockSize
		if _, err := f.ReadAt(table, off); err != nil {
			return err
		}
		changed := false
		for i := int64(0); i < inodesPerGroup; i++ {
			in := table[i*inodeSize : (i+1)*inodeSize]
			if le.Uint16(in[0x0:]) == 0 && le.Uint16(in[0x1A:]) == 0 {
				continue
			}
			mtime := le.Uint32(in[0x10:])
			if le.Uint32(in[0x8:]) != mtime || le.Uint32(in[0xC:]) != mtime {
				le.PutUint32(in[0x8:], mtime)
				le.PutUint32(in[0xC:], mtime)
				changed = true
			}
			if forceRoot {
				for _, o := range []int{0x2, 0x18, 0x78, 0x7A} {
					if le.Uint16(in[o:]) != 0 {
						le.PutUint16(in[o:], 0)
						changed = true
					}
				}
			}
		}
		if changed {
			if _, err := f.WriteAt(table, off); err != nil {
				return err
			}
		}
	}
	return f.Sync()
}

// SafeRemoveAll removes a build directory, but never one that still has
// something mounted under it (an interrupted mmdebstrap can leave /dev or
// /proc bound inside its target, and removing through those would delete
// host files).
func SafeRemoveAll(dir string) error {
	if dir == "" || dir == "/" {
		return fmt.Errorf("refusing to remove %q", dir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err == nil {
		for _, l := range strings.Split(string(mi), "\n") {
			f := strings.Fields(l)
			if len(f) < 5 {
				continue
			}
			mp := unescapeMount(f[4])
			if mp == abs || strings.HasPrefix(mp, abs+"/") {
				return fmt.Errorf("not removing %s: %s is still mounted (unmount it by hand)", abs, mp)
			}
		}
	}
	return os.RemoveAll(abs)
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
