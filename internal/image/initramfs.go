package image

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/image/cache"
	"github.com/mvm-sandbox/mvm/internal/paths"
)

// InitramfsSpec describes the contents of a guest initramfs.
type InitramfsSpec struct {
	Agent   string   // host path of the static mvm-agent binary; becomes /init (mode 0755)
	Busybox string   // host path of a static busybox ("" = none); becomes /bin/busybox plus one symlink per applet
	Kernel  *Kernel  // kernel whose modules are packed; required when Modules is not empty
	Modules []string // module names; their closure goes to /lib/modules/<file>.ko, the load order (one guest path a line) to /etc/mvm/modules
	// Files holds extra files by guest absolute path (mode 0644), e.g.
	// /etc/mvm/image.json. They take precedence over busybox applet links.
	Files map[string][]byte
}

// Guest paths written by WriteInitramfs.
const (
	GuestModulesDir  = "/lib/modules"
	GuestModulesList = "/etc/mvm/modules"
	GuestBusybox     = "/bin/busybox"
)

// initramfsFormat is mixed into the cache key; bump it whenever the archive
// layout produced for the same inputs changes.
const initramfsFormat = "mvm-initramfs-v1"

// baseDirs are created in every initramfs, with their modes.
var baseDirs = map[string]uint32{
	"bin": 0o755, "dev": 0o755, "etc": 0o755, "etc/mvm": 0o755, "lib": 0o755,
	"lib/modules": 0o755, "mnt": 0o755, "proc": 0o555, "root": 0o700, "run": 0o755,
	"sbin": 0o755, "sys": 0o555, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755,
	"usr/sbin": 0o755, "var": 0o755,
}

// Mode type bits of newc headers.
const (
	sIFMT  = 0o170000
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
)

// entry is one member of the archive; name is relative ("bin/sh").
type entry struct {
	name   string
	mode   uint32 // type and permission bits
	data   []byte // file contents or symlink target
	rmajor uint32
	rminor uint32
}

// initramfsInputs are the bytes an archive is built from, read once so that
// the cache key and the archive describe the same content.
type initramfsInputs struct {
	agent   []byte
	busybox []byte
}

func readInputs(spec InitramfsSpec) (*initramfsInputs, error) {
	if spec.Agent == "" {
		return nil, errors.New("initramfs: no agent binary given")
	}
	in := &initramfsInputs{}
	var err error
	if in.agent, err = os.ReadFile(spec.Agent); err != nil {
		return nil, fmt.Errorf("initramfs: read agent: %w", err)
	}
	if spec.Busybox != "" {
		if in.busybox, err = os.ReadFile(spec.Busybox); err != nil {
			return nil, fmt.Errorf("initramfs: read busybox: %w", err)
		}
	}
	return in, nil
}

// WriteInitramfs writes an uncompressed newc cpio archive for spec to w.
//
// The archive is deterministic: entries are sorted, every directory precedes
// its contents, and mtimes, uids and gids are zero, so the same inputs give
// the same bytes. It always holds the base directories (/dev, /proc, /sys,
// /tmp, /run, /etc, /root, /bin, /sbin, /usr/bin, /usr/sbin, /lib/modules,
// /mnt, ...) and a /dev/console character device (5,1), so the kernel can
// open the console before devtmpfs is mounted.
func WriteInitramfs(spec InitramfsSpec, w io.Writer) error {
	in, err := readInputs(spec)
	if err != nil {
		return err
	}
	return writeInitramfs(spec, in, w)
}

func writeInitramfs(spec InitramfsSpec, in *initramfsInputs, w io.Writer) error {
	entries, err := buildEntries(spec, in)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	nw := &newcWriter{w: bw}
	for _, e := range entries {
		if err := nw.write(e); err != nil {
			return fmt.Errorf("initramfs: write %s: %w", e.name, err)
		}
	}
	if err := nw.trailer(); err != nil {
		return fmt.Errorf("initramfs: write trailer: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}

// buildEntries collects every archive member, adds missing parent
// directories and returns them sorted by name (parents sort before children).
func buildEntries(spec InitramfsSpec, in *initramfsInputs) ([]entry, error) {
	m := map[string]entry{}
	applet := map[string]bool{} // names that extra files may replace
	for d, perm := range baseDirs {
		m[d] = entry{name: d, mode: sIFDIR | perm}
	}
	m["dev/console"] = entry{name: "dev/console", mode: sIFCHR | 0o600, rmajor: 5, rminor: 1}

	if in.busybox != nil {
		applets, err := busyboxApplets(spec.Busybox)
		if err != nil {
			return nil, err
		}
		for _, a := range applets {
			if _, taken := m[a]; taken {
				continue
			}
			m[a] = entry{name: a, mode: sIFLNK | 0o777, data: []byte(GuestBusybox)}
			applet[a] = true
		}
		m[strings.TrimPrefix(GuestBusybox, "/")] = entry{name: strings.TrimPrefix(GuestBusybox, "/"), mode: sIFREG | 0o755, data: in.busybox}
	}

	// The load order file is always present (empty without modules).
	var list strings.Builder
	if len(spec.Modules) > 0 {
		if spec.Kernel == nil {
			return nil, errors.New("initramfs: modules requested but no kernel given")
		}
		kos, err := ModuleClosure(spec.Kernel.ModulesDir, spec.Modules)
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		seen := map[string]string{}
		for _, ko := range kos {
			base := filepath.Base(ko)
			if other, dup := seen[base]; dup {
				return nil, fmt.Errorf("initramfs: modules %s and %s share a file name", other, ko)
			}
			seen[base] = ko
			data, err := os.ReadFile(ko)
			if err != nil {
				return nil, fmt.Errorf("initramfs: read module: %w", err)
			}
			guest := path.Join(GuestModulesDir, base)
			m[guest[1:]] = entry{name: guest[1:], mode: sIFREG | 0o644, data: data}
			list.WriteString(guest + "\n")
		}
	}
	m[GuestModulesList[1:]] = entry{name: GuestModulesList[1:], mode: sIFREG | 0o644, data: []byte(list.String())}

	for p, data := range spec.Files {
		name, err := guestName(p)
		if err != nil {
			return nil, err
		}
		if _, taken := m[name]; taken && !applet[name] {
			return nil, fmt.Errorf("initramfs: extra file /%s conflicts with a built-in entry", name)
		}
		m[name] = entry{name: name, mode: sIFREG | 0o644, data: data}
	}
	// The agent is added last so that nothing can replace /init.
	m["init"] = entry{name: "init", mode: sIFREG | 0o755, data: in.agent}

	// Add missing parents; check that no parent is a non-directory.
	for name := range m {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if e, ok := m[d]; ok {
				if e.mode&sIFMT != sIFDIR {
					return nil, fmt.Errorf("initramfs: /%s is needed as a directory for /%s", d, name)
				}
				continue
			}
			m[d] = entry{name: d, mode: sIFDIR | 0o755}
		}
	}
	out := make([]entry, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// guestName validates an absolute guest path and returns it relative to /.
func guestName(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("initramfs: file path %q is not absolute", p)
	}
	c := path.Clean(p)
	if c != p || c == "/" {
		return "", fmt.Errorf("initramfs: file path %q is not a clean file path", p)
	}
	if c == "/init" {
		return "", errors.New("initramfs: /init is reserved for the agent")
	}
	return c[1:], nil
}

// busyboxApplets returns the applet paths (relative, e.g. "bin/sh") of the
// busybox binary at bin, as it reports with --list-full (or --list, placed
// in /bin).
func busyboxApplets(bin string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--list-full").Output()
	full := err == nil
	if !full {
		out, err = exec.CommandContext(ctx, bin, "--list").Output()
		if err != nil {
			return nil, fmt.Errorf("initramfs: list busybox applets (%s --list-full): %w", bin, err)
		}
	}
	var applets []string
	for _, line := range strings.Split(string(out), "\n") {
		a := strings.TrimSpace(line)
		if a == "" {
			continue
		}
		if !full {
			a = "bin/" + a
		}
		c := path.Clean(a)
		if c != a || path.IsAbs(c) || c == ".." || strings.HasPrefix(c, "../") || !strings.Contains(c, "/") {
			// Skips odd entries and root-level ones such as "linuxrc".
			continue
		}
		if path.Base(c) == "busybox" {
			continue
		}
		applets = append(applets, c)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("initramfs: %s lists no applets", bin)
	}
	return applets, nil
}

// newcWriter writes the "newc" (070701) cpio format, including the device
// numbers that github.com/cavaliergopher/cpio does not write.
type newcWriter struct {
	w     io.Writer
	ino   uint32
	off   int64
	zeros [4]byte
}

func (n *newcWriter) header(name string, ino, mode, nlink uint32, size int, rmajor, rminor uint32) error {
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, len(name)+1, 0)
	if err := n.put([]byte(h)); err != nil {
		return err
	}
	if err := n.put(append([]byte(name), 0)); err != nil {
		return err
	}
	return n.pad()
}

func (n *newcWriter) put(b []byte) error {
	k, err := n.w.Write(b)
	n.off += int64(k)
	return err
}

func (n *newcWriter) pad() error {
	if r := n.off % 4; r != 0 {
		return n.put(n.zeros[:4-r])
	}
	return nil
}

func (n *newcWriter) write(e entry) error {
	nlink := uint32(1)
	if e.mode&sIFMT == sIFDIR {
		nlink = 2
	}
	n.ino++
	if err := n.header(e.name, n.ino, e.mode, nlink, len(e.data), e.rmajor, e.rminor); err != nil {
		return err
	}
	if err := n.put(e.data); err != nil {
		return err
	}
	return n.pad()
}

func (n *newcWriter) trailer() error {
	return n.header("TRAILER!!!", 0, 0, 1, 0, 0, 0)
}

// initramfsIndex is the small record kept per input set.
type initramfsIndex struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// EnsureInitramfs builds the initramfs for spec into
// d.Images()/initramfs/<sha256>.cpio unless it is already there, and returns
// its path and "sha256:<hex>" digest.
//
// A small index keyed by a hash of the inputs (agent and busybox contents,
// kernel digest, module list, extra files) makes an unchanged input set cost
// only hashing the agent and busybox files. Files are written to temporary
// names and renamed into place, so concurrent callers are safe.
func EnsureInitramfs(d paths.Dirs, spec InitramfsSpec) (string, string, error) {
	if len(spec.Modules) > 0 && spec.Kernel == nil {
		return "", "", errors.New("initramfs: modules requested but no kernel given")
	}
	dir := filepath.Join(d.Images(), "initramfs")
	// The agent and busybox are hashed once per file identity: an
	// unchanged input set then costs a few stats, not reading ~13 MB on
	// every boot.
	sums, err := stampedSums(filepath.Join(dir, "stamps"), spec)
	if err != nil {
		return "", "", err
	}
	key := inputKeyFromSums(spec, sums)
	indexPath := filepath.Join(dir, "index", key+".json")

	if raw, err := os.ReadFile(indexPath); err == nil {
		var idx initramfsIndex
		if json.Unmarshal(raw, &idx) == nil && validDigest(idx.Digest) {
			p := filepath.Join(dir, strings.TrimPrefix(idx.Digest, "sha256:")+".cpio")
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Size() == idx.Size {
				return p, idx.Digest, nil
			}
		}
	}

	in, err := readInputs(spec)
	if err != nil {
		return "", "", err
	}
	if k := inputKey(spec, in); k != key {
		// An input changed since it was stat'ed: index what was read.
		key, indexPath = k, filepath.Join(dir, "index", k+".json")
	}
	tmp, err := cache.CreateTemp(dir, ".tmp-*.cpio")
	if err != nil {
		return "", "", fmt.Errorf("initramfs: create temp file: %w", err)
	}
	defer tmp.Abort() // no-op after Commit
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, h)}
	if err := writeInitramfs(spec, in, cw); err != nil {
		return "", "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	final := filepath.Join(dir, sum+".cpio")
	if st, err := os.Stat(final); err == nil && st.Mode().IsRegular() && st.Size() == cw.n {
		// Another caller built the same bytes; keep its file.
	} else if err := tmp.Commit(final, cache.FileMode); err != nil {
		return "", "", fmt.Errorf("initramfs: install: %w", err)
	}
	digest := "sha256:" + sum
	raw, _ := json.Marshal(initramfsIndex{Digest: digest, Size: cw.n})
	if err := cache.WriteFile(indexPath, raw, cache.FileMode); err != nil {
		return "", "", fmt.Errorf("initramfs: write index: %w", err)
	}
	return final, digest, nil
}

// inputSums are the hex sha256 of the agent and busybox ("" for none).
type inputSums struct{ agent, busybox string }

// inputKey hashes everything an archive depends on into a hex key.
func inputKey(spec InitramfsSpec, in *initramfsInputs) string {
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	sums := inputSums{agent: sum(in.agent)}
	if in.busybox != nil {
		sums.busybox = sum(in.busybox)
	}
	return inputKeyFromSums(spec, sums)
}

// inputKeyFromSums is inputKey given the digests of the agent and busybox.
func inputKeyFromSums(spec InitramfsSpec, sums inputSums) string {
	h := sha256.New()
	field := func(k string, v []byte) {
		fmt.Fprintf(h, "%s %d\n", k, len(v))
		h.Write(v)
		h.Write([]byte{'\n'})
	}
	sum := func(b []byte) []byte { s := sha256.Sum256(b); return []byte(hex.EncodeToString(s[:])) }
	field("format", []byte(initramfsFormat))
	field("agent", []byte(sums.agent))
	if sums.busybox != "" {
		field("busybox", []byte(sums.busybox))
	} else {
		field("busybox", nil)
	}
	if len(spec.Modules) > 0 && spec.Kernel != nil {
		field("kernel", []byte(spec.Kernel.Digest))
		field("kernel-modules-dir", []byte(spec.Kernel.ModulesDir))
	}
	field("modules", []byte(strings.Join(spec.Modules, "\x00")))
	names := make([]string, 0, len(spec.Files))
	for p := range spec.Files {
		names = append(names, p)
	}
	sort.Strings(names)
	for _, p := range names {
		field("file", []byte(p))
		field("content", sum(spec.Files[p]))
	}
	s := h.Sum(nil)
	return hex.EncodeToString(s)
}

func validDigest(d string) bool {
	hexPart, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hexPart) != 64 {
		return false
	}
	_, err := hex.DecodeString(hexPart)
	return err == nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
