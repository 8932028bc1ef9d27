// Package snapshot is the on-disk store of saved sandboxes: one directory
// per tag under the data directory holding the guest's memory and device
// state, the writable disk captured at the same instant, the plan and spec
// the sandbox ran under, and a sidecar (meta.json) naming every file with
// its size and digest, signed with the host key.
//
// A snapshot is written into a temporary directory and renamed into place,
// so a save killed half way leaves nothing under its tag; Verify checks the
// signature and every digest before a restore. Files are 0600 and
// directories 0700. The backend does the saving and restoring, the
// supervisor restore-vs-boot, the runtime the rest.
package snapshot

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// Files of a snapshot directory.
const (
	// MemoryFile is the VMM's saved state: QEMU's migration stream
	// (memory and devices), Firecracker's microVM state file (devices
	// and vCPUs; its guest memory is GuestMemoryFile).
	MemoryFile = "memory.state"
	// GuestMemoryFile is a Firecracker snapshot's guest memory (Firecracker
	// writes two files where QEMU writes one). A QEMU snapshot has none.
	GuestMemoryFile = "guest.mem"
	// DiskFile is the sandbox's writable disk (the overlay's upper layer)
	// as it was when the memory was saved.
	DiskFile = "upper.img"
	// PlanFile is the signed plan the source sandbox was admitted with.
	PlanFile = "plan.json"
	// SpecFile is the source sandbox's spec (the machine to rebuild).
	SpecFile = "spec.json"
	// EnvFile is the sandbox's default environment for exec (values:
	// mode 0600 like every file here, never in evidence).
	EnvFile = "env.json"
	// MetaFile is the sidecar: Meta, canonical JSON; SigFile its signature.
	MetaFile = "meta.json"
	SigFile  = "meta.sig"
)

// SchemaVersion is the Meta schema this build writes and reads.
const SchemaVersion = 1

// signDomain separates snapshot sidecar signatures from every other
// signature of the host key.
const signDomain = "mvm-snapshot-meta-v1"

// Errors in the one error model.
var (
	ErrNotFound = errdefs.WithReason(errdefs.KindNotFound, ReasonSnapshot, errors.New("snapshot not found"))
	ErrExists   = errdefs.WithReason(errdefs.KindAlreadyExists, ReasonSnapshot, errors.New("snapshot exists"))
	// ErrIntegrity: the snapshot's files are not the ones saved (tampered,
	// truncated, or its sidecar is not signed by this host).
	ErrIntegrity = errdefs.WithReason(errdefs.KindRefused, ReasonIntegrity, errors.New("snapshot failed verification"))
	// ErrMismatch: the snapshot was saved on a machine this host cannot
	// rebuild exactly (another QEMU, kernel, initramfs or image).
	ErrMismatch = errdefs.WithReason(errdefs.KindFailedPrecondition, ReasonSnapshot, errors.New("snapshot does not match this host"))
)

// Reasons (errdefs) of snapshot errors.
const (
	ReasonSnapshot  = "snapshot"
	ReasonIntegrity = "integrity"
)

// Match is everything a restore must find identical to what the snapshot
// was saved from: a VMM restores a state only into the same machine. Warm
// starts use it as their match key (Key).
type Match struct {
	Backend string `json:"backend"`
	// VMMBinary is the sha256 of the VMM executable, VMMVersion its
	// version line.
	VMMBinary  string `json:"vmm_binary_sha256"`
	VMMVersion string `json:"vmm_version"`
	// Machine is the machine type and its options.
	Machine      string `json:"machine"`
	Accel        string `json:"accel"`
	KernelDigest string `json:"kernel_digest"`
	// InitrdDigest covers the agent too: it is the initramfs's /init.
	InitrdDigest string `json:"initrd_digest"`
	ImageDigest  string `json:"image_digest"`
	OCIDigest    string `json:"oci_digest,omitempty"`
	MemoryMiB    int    `json:"memory_mib"`
	CPUs         int    `json:"cpus"`
	// Devices describes the device model: disks (read-only or not, by
	// order), the NIC, the agent channel.
	Devices string `json:"devices"`
}

// Key is a stable string of m, for comparing and indexing.
func (m Match) Key() string {
	b, _ := json.Marshal(m)
	return evidence.SHA256Hex(b)
}

// Diff names the fields in which got differs from m ("" when equal).
func (m Match) Diff(got Match) string {
	var a, b map[string]any
	ja, _ := json.Marshal(m)
	jb, _ := json.Marshal(got)
	json.Unmarshal(ja, &a)
	json.Unmarshal(jb, &b)
	var out []string
	for k, v := range a {
		if fmt.Sprint(v) != fmt.Sprint(b[k]) {
			out = append(out, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// File is one file of a snapshot with its size and digest.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Digest string `json:"digest"`
}

// Meta is a snapshot's sidecar.
type Meta struct {
	SchemaVersion int       `json:"schema_version"`
	Tag           string    `json:"tag"`
	Created       time.Time `json:"created"`
	// SourceID and SourceName name the sandbox it was saved from.
	SourceID   string `json:"source_id"`
	SourceName string `json:"source_name"`
	ImageName  string `json:"image_name"`
	Match      Match  `json:"match"`
	// Secrets are the names of the secrets the source sandbox was given:
	// their values may be in the saved memory.
	Secrets []string `json:"secrets"`
	// SaveMS is how long the guest was stopped for the save.
	SaveMS          int64  `json:"save_ms"`
	DigestAlgorithm string `json:"digest_algorithm"`
	Files           []File `json:"files"`
}

// Size is the bytes of every file of the snapshot (apparent sizes).
func (m *Meta) Size() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// File returns the entry for name.
func (m *Meta) File(name string) (File, bool) {
	for _, f := range m.Files {
		if f.Name == name {
			return f, true
		}
	}
	return File{}, false
}

var tagRE = lazyre.New(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateTag checks a user-chosen tag.
func ValidateTag(tag string) error {
	if !tagRE.MatchString(tag) {
		return errdefs.Errorf(errdefs.KindInvalidArgument, "invalid snapshot tag %q: use 1-63 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit", tag)
	}
	return nil
}

// Store is a directory of snapshots, one subdirectory per tag.
type Store struct{ Dir string }

// Open is the snapshot store of a data directory.
func Open(dataDir string) *Store { return &Store{Dir: filepath.Join(dataDir, "snapshots")} }

// Path is the directory of tag.
func (s *Store) Path(tag string) string { return filepath.Join(s.Dir, tag) }

// Pending is a snapshot being written: files go into Dir, Commit puts it
// under its tag.
type Pending struct {
	Dir   string
	Tag   string
	store *Store
}

// tmpPrefix starts the name of a directory being written; ".tmp-<pid>-"
// lets a later call see that its writer is gone.
const tmpPrefix = ".tmp-"

// Begin starts writing snapshot tag, which must not exist yet.
func (s *Store) Begin(tag string) (*Pending, error) {
	if err := ValidateTag(tag); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	s.CleanStale()
	if _, err := os.Stat(s.Path(tag)); err == nil {
		return nil, fmt.Errorf("snapshot %q: %w (choose another tag, or remove that snapshot first)", tag, ErrExists)
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	dir := filepath.Join(s.Dir, tmpPrefix+strconv.Itoa(os.Getpid())+"-"+hex.EncodeToString(rnd[:])+"-"+tag)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	return &Pending{Dir: dir, Tag: tag, store: s}, nil
}

// Abort removes what was written.
func (p *Pending) Abort() { os.RemoveAll(p.Dir) }

// Commit digests every file in the pending directory, writes the sidecar
// (with meta's other fields) signed by signer, and renames the directory to
// its tag. Nothing is visible under the tag before the rename.
func (p *Pending) Commit(meta Meta, signer *evidence.Signer) (*Meta, error) {
	ents, err := os.ReadDir(p.Dir)
	if err != nil {
		return nil, err
	}
	meta.SchemaVersion = SchemaVersion
	meta.Tag = p.Tag
	meta.DigestAlgorithm = DigestAlgorithm
	meta.Files = nil
	if meta.Secrets == nil {
		meta.Secrets = []string{}
	}
	for _, e := range ents {
		if e.Name() == MetaFile || e.Name() == SigFile {
			continue
		}
		if !e.Type().IsRegular() {
			return nil, fmt.Errorf("snapshot: %s is not a regular file", e.Name())
		}
		path := filepath.Join(p.Dir, e.Name())
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, err
		}
		d, size, err := FileDigest(path)
		if err != nil {
			return nil, err
		}
		meta.Files = append(meta.Files, File{Name: e.Name(), Size: size, Digest: d})
	}
	b, err := evidence.Canonical(meta)
	if err != nil {
		return nil, err
	}
	if err := writeSynced(filepath.Join(p.Dir, MetaFile), b); err != nil {
		return nil, err
	}
	if err := writeSynced(filepath.Join(p.Dir, SigFile), []byte(hex.EncodeToString(signer.Sign(signDomain, b))+"\n")); err != nil {
		return nil, err
	}
	syncDir(p.Dir)
	if _, err := os.Stat(p.store.Path(p.Tag)); err == nil {
		return nil, fmt.Errorf("snapshot %q: %w", p.Tag, ErrExists)
	}
	if err := os.Rename(p.Dir, p.store.Path(p.Tag)); err != nil {
		return nil, err
	}
	syncDir(p.store.Dir)
	p.Dir = p.store.Path(p.Tag)
	return &meta, nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// CleanStale removes directories left by writers and removers that died
// (killed during a save or a remove).
func (s *Store) CleanStale() {
	ents, _ := os.ReadDir(s.Dir)
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, tmpPrefix) && !strings.HasPrefix(name, rmPrefix) {
			continue
		}
		if strings.HasPrefix(name, rmPrefix) {
			os.RemoveAll(filepath.Join(s.Dir, name))
			continue
		}
		pid, _ := strconv.Atoi(strings.SplitN(strings.TrimPrefix(name, tmpPrefix), "-", 2)[0])
		if pid == os.Getpid() || alive(pid) {
			continue // its writer still runs
		}
		os.RemoveAll(filepath.Join(s.Dir, name))
	}
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// Snapshot is a stored snapshot.
type Snapshot struct {
	Dir  string
	Meta Meta
}

// Path is the path of one of its files.
func (s *Snapshot) Path(name string) string { return filepath.Join(s.Dir, name) }

// Get reads snapshot tag's sidecar without verifying anything (for
// listing; restores use Verify).
func (s *Store) Get(tag string) (*Snapshot, error) {
	if err := ValidateTag(tag); err != nil {
		return nil, err
	}
	dir := s.Path(tag)
	b, err := os.ReadFile(filepath.Join(dir, MetaFile))
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(dir); serr != nil {
			return nil, fmt.Errorf("%w: no snapshot tagged %q", ErrNotFound, tag)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w: its sidecar %s cannot be read (%v); remove the snapshot and save it again", tag, ErrIntegrity, MetaFile, err)
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w: its sidecar %s is not valid JSON; remove the snapshot and save it again", tag, ErrIntegrity, MetaFile)
	}
	if m.SchemaVersion != SchemaVersion {
		return nil, fmt.Errorf("snapshot %q: %w: schema version %d (this mvmctl reads %d); save it again", tag, ErrMismatch, m.SchemaVersion, SchemaVersion)
	}
	return &Snapshot{Dir: dir, Meta: m}, nil
}

// List returns the snapshots, oldest first. Unreadable ones are listed
// with only their tag.
func (s *Store) List() ([]*Snapshot, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	s.CleanStale()
	var out []*Snapshot
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		sn, err := s.Get(e.Name())
		if err != nil {
			sn = &Snapshot{Dir: s.Path(e.Name()), Meta: Meta{Tag: e.Name()}}
		}
		out = append(out, sn)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Meta.Created.Before(out[j].Meta.Created) })
	return out, nil
}

const rmPrefix = ".rm-"

// Remove deletes snapshot tag: it disappears at once (a rename), then its
// files are removed.
func (s *Store) Remove(tag string) error {
	if err := ValidateTag(tag); err != nil {
		return err
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	gone := filepath.Join(s.Dir, rmPrefix+hex.EncodeToString(rnd[:])+"-"+tag)
	if err := os.Rename(s.Path(tag), gone); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: no snapshot tagged %q", ErrNotFound, tag)
		}
		return err
	}
	return os.RemoveAll(gone)
}

// Verify checks the sidecar's signature (the host key pub) and then
// VerifyFiles. skip names files whose digests the caller checks itself
// (while copying them: CopyVerified).
func (sn *Snapshot) Verify(pub ed25519.PublicKey, skip ...string) error {
	tag := filepath.Base(sn.Dir)
	fail := func(format string, args ...any) error {
		return fmt.Errorf("snapshot %q: %w: %s; refusing to restore it: remove it and save a new one", tag, ErrIntegrity, fmt.Sprintf(format, args...))
	}
	b, err := os.ReadFile(sn.Path(MetaFile))
	if err != nil {
		return fail("%s cannot be read", MetaFile)
	}
	sigHex, err := os.ReadFile(sn.Path(SigFile))
	if err != nil {
		return fail("%s (the sidecar's signature) is missing", SigFile)
	}
	sig, err := hex.DecodeString(strings.TrimSpace(string(sigHex)))
	if err != nil || !evidence.Verify(pub, signDomain, b, sig) {
		return fail("its sidecar %s is not signed by this host's key", MetaFile)
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return fail("its sidecar is not valid JSON")
	}
	if m.Tag != tag {
		return fail("its sidecar is for snapshot %q", m.Tag)
	}
	sn.Meta = m
	return sn.VerifyFiles(skip...)
}

// VerifyFiles checks that the directory holds exactly the files the
// sidecar (as last read: Get or Verify) names, with their sizes, modes and
// digests, except the digests of skip. It does not check the sidecar's
// signature: Verify does; VerifyFiles alone is for snapshots whose
// directory is trusted like the artifacts beside it (the cache).
func (sn *Snapshot) VerifyFiles(skip ...string) error {
	tag := filepath.Base(sn.Dir)
	fail := func(format string, args ...any) error {
		return fmt.Errorf("snapshot %q: %w: %s; refusing to restore it: remove it and save a new one", tag, ErrIntegrity, fmt.Sprintf(format, args...))
	}
	m := sn.Meta
	if m.DigestAlgorithm != DigestAlgorithm {
		return fail("unknown digest algorithm %q", m.DigestAlgorithm)
	}
	if err := checkStateFiles(m); err != nil {
		return fail("%v", err)
	}
	ents, err := os.ReadDir(sn.Dir)
	if err != nil {
		return err
	}
	listed := map[string]bool{MetaFile: true, SigFile: true}
	for _, f := range m.Files {
		listed[f.Name] = true
	}
	for _, e := range ents {
		if !listed[e.Name()] {
			return fail("it holds a file its sidecar does not list (%s)", e.Name())
		}
	}
	skipped := map[string]bool{}
	for _, s := range skip {
		skipped[s] = true
	}
	for _, f := range m.Files {
		if strings.ContainsAny(f.Name, `/\`) || f.Name == "." || f.Name == ".." {
			return fail("its sidecar names a bad file %q", f.Name)
		}
		fi, err := os.Lstat(sn.Path(f.Name))
		if err != nil {
			return fail("%s is missing", f.Name)
		}
		if !fi.Mode().IsRegular() {
			return fail("%s is not a regular file", f.Name)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return fail("%s is readable by others (mode %o)", f.Name, fi.Mode().Perm())
		}
		if fi.Size() != f.Size {
			return fail("%s is %d bytes, %d were saved (truncated or changed)", f.Name, fi.Size(), f.Size)
		}
		if skipped[f.Name] {
			continue
		}
		d, _, err := FileDigest(sn.Path(f.Name))
		if err != nil {
			return fail("%s cannot be read: %v", f.Name, err)
		}
		if d != f.Digest {
			return fail("%s does not match its recorded digest (changed after it was saved)", f.Name)
		}
	}
	return nil
}

// StateFiles are the files a backend's saved state consists of: a
// snapshot saved by that backend must list every one of them, and no
// other backend's.
func StateFiles(backend string) ([]string, error) {
	switch backend {
	case "", "qemu":
		return []string{MemoryFile}, nil
	case "firecracker":
		return []string{MemoryFile, GuestMemoryFile}, nil
	}
	return nil, fmt.Errorf("it was saved by an unknown backend %q", backend)
}

// checkStateFiles checks that m lists exactly the state files of the
// backend it records (Match.Backend): a Firecracker snapshot without its
// guest memory, or a QEMU snapshot carrying one, is not restorable.
func checkStateFiles(m Meta) error {
	want, err := StateFiles(m.Match.Backend)
	if err != nil {
		return err
	}
	for _, name := range want {
		if _, ok := m.File(name); !ok {
			return fmt.Errorf("its sidecar does not list %s, which a %s snapshot needs", name, backendName(m.Match.Backend))
		}
	}
	if _, ok := m.File(GuestMemoryFile); ok && len(want) == 1 {
		return fmt.Errorf("it holds %s (a firecracker snapshot's guest memory) but records the %s backend", GuestMemoryFile, backendName(m.Match.Backend))
	}
	return nil
}

func backendName(b string) string {
	if b == "" {
		return "qemu"
	}
	return b
}

// CopyVerified copies file name of the snapshot to dst and checks the copy
// against the sidecar: a mismatch removes dst and is an integrity error.
// Verify must have read the sidecar first.
func (sn *Snapshot) CopyVerified(name, dst string) error {
	return sn.copyVerified(name, dst, CopySparse)
}

// CopyVerifiedUnsynced is CopyVerified without syncing the copy
// (CopySparseUnsynced).
func (sn *Snapshot) CopyVerifiedUnsynced(name, dst string) error {
	return sn.copyVerified(name, dst, CopySparseUnsynced)
}

func (sn *Snapshot) copyVerified(name, dst string, copyFile func(src, dst string) (string, error)) error {
	f, ok := sn.Meta.File(name)
	if !ok {
		return fmt.Errorf("snapshot %q: %w: %s is not in its sidecar", sn.Meta.Tag, ErrIntegrity, name)
	}
	d, err := copyFile(sn.Path(name), dst)
	if err != nil {
		return fmt.Errorf("snapshot %q: copy %s: %w", sn.Meta.Tag, name, err)
	}
	if d != f.Digest {
		os.Remove(dst)
		return fmt.Errorf("snapshot %q: %w: %s does not match its recorded digest (changed after it was saved); refusing to restore it: remove it and save a new one", sn.Meta.Tag, ErrIntegrity, name)
	}
	return nil
}
