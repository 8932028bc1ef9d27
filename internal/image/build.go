package image

// Building root filesystem artifacts and keeping them in the cache.
//
// Cache layout, under d.Images():
//
//	artifacts/<hex>/rootfs.ext4     the image; <hex> is the sha256 of its bytes
//	artifacts/<hex>/artifact.json   what it is (Artifact)
//	rootfs-index/<key>.json         input key -> digest, for cache hits
//	names/<name>.json               image name -> digest of its latest build
//	trees/<key>/                    unpacked root trees (template + packages)
//	locks/<key>.lock                flock(2) per tree or image key
//	tmp/                            work directories, renamed into place
//
// See docs/images.md.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/image/cache"
	"github.com/mvm-sandbox/mvm/internal/image/oci"
	"github.com/mvm-sandbox/mvm/internal/image/rootfs"
	"github.com/mvm-sandbox/mvm/internal/manifest"
	"github.com/mvm-sandbox/mvm/internal/paths"
)

// rootfsFormat is mixed into every key; bump it when the bytes produced for
// the same inputs change.
const rootfsFormat = "mvm-rootfs-v1"

// RootfsConfigPath is where the image's configuration is written; the
// guest agent reads it.
const RootfsConfigPath = "/etc/mvm/image.json"

// RootfsFile is the image file name inside an artifact directory.
const RootfsFile = "rootfs.ext4"

// Build phases and statuses reported through Event.
const (
	PhaseResolve   = "resolve"
	PhaseBootstrap = "bootstrap"
	PhasePackages  = "packages"
	PhaseFiles     = "files"
	PhasePack      = "pack"
	PhaseRecord    = "record"

	StatusStarted  = "started"
	StatusDone     = "done"
	StatusFailed   = "failed"
	StatusProgress = "progress"
)

// Event is one progress report of a build.
type Event struct {
	Time    time.Time `json:"time"`
	Phase   string    `json:"phase"`
	Status  string    `json:"status"`
	Message string    `json:"message,omitempty"`
}

// RootfsConfig is /etc/mvm/image.json: what the agent needs to know about
// the image it booted. The agent reads profile, env, command and workdir;
// the rest is informational (and makes images that differ in them differ in
// digest).
type RootfsConfig struct {
	Profile   string            `json:"profile"`
	Env       map[string]string `json:"env,omitempty"`
	Command   []string          `json:"command,omitempty"`
	Workdir   string            `json:"workdir,omitempty"`
	Template  string            `json:"template"`
	Name      string            `json:"name,omitempty"`
	CPUs      int               `json:"cpus,omitempty"`
	MemoryMiB int64             `json:"memory_mib,omitempty"`
	DiskMiB   int64             `json:"disk_mib,omitempty"`
	// Network and Allow are the manifest's network request (applied at
	// boot, on the host; the guest never enforces them).
	Network string   `json:"network,omitempty"`
	Allow   []string `json:"allow,omitempty"`
	// User is who the agent runs processes as (an OCI image's USER,
	// resolved against the image's /etc/passwd); nil is root.
	User *ImageUser `json:"user,omitempty"`
}

// Artifact is a built root filesystem image (artifact.json).
type Artifact struct {
	Digest   string            `json:"digest"` // "sha256:<hex>" of the image bytes
	Size     int64             `json:"size"`   // image file size in bytes
	Format   string            `json:"format"` // "ext4"
	Template string            `json:"template"`
	Suite    string            `json:"suite,omitempty"`
	Packages []string          `json:"packages,omitempty"`       // every package asked for (template's and extra)
	Extra    []string          `json:"extra_packages,omitempty"` // the manifest's packages
	Created  time.Time         `json:"created"`
	Profile  string            `json:"profile"`
	Env      map[string]string `json:"env,omitempty"`
	Command  []string          `json:"command,omitempty"`
	// Entrypoint is the leading part of Command that `run -- ARGV` keeps
	// (an OCI image's Entrypoint; ARGV replaces the rest, its Cmd). A
	// manifest's command replaces both, so it has none.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Workdir    string   `json:"workdir"`
	Name       string   `json:"name,omitempty"`
	CPUs       int      `json:"cpus,omitempty"`
	MemoryMiB  int64    `json:"memory_mib,omitempty"`
	DiskMiB    int64    `json:"disk_mib"`
	Network    string   `json:"network,omitempty"`
	Allow      []string `json:"allow,omitempty"`
	Source     string   `json:"source"`    // manifest directory, or "template:<name>"
	InputKey   string   `json:"input_key"` // hash of everything the image was built from
	Files      int      `json:"files,omitempty"`
	FileBytes  int64    `json:"file_bytes,omitempty"`
	BuildMS    int64    `json:"build_ms,omitempty"`
	// OCI is set for an artifact made from an OCI image (pull or import).
	OCI *OCIInfo `json:"oci,omitempty"`

	// Path is the image file (filled in when loaded, not stored).
	Path string `json:"path,omitempty"`
	// Cached is true when Build found the artifact in the cache.
	Cached bool `json:"cached,omitempty"`
	// Repinned is set when this build resolved its OCI base again
	// (refresh) and the pin moved to another digest (not stored).
	Repinned *Repin `json:"repinned,omitempty"`
}

// ID is the artifact's sha256 in hex (its directory name).
func (a *Artifact) ID() string { return strings.TrimPrefix(a.Digest, "sha256:") }

// ShortID is the first 12 hex digits of the digest.
func (a *Artifact) ShortID() string {
	id := a.ID()
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// BuildOptions adjusts a build.
type BuildOptions struct {
	// Manifest, when set, is used instead of loading DIR/mvm.toml.
	Manifest *manifest.Manifest
	// Profile overrides the manifest's profile for a bare template build
	// ("" = dev).
	Profile string
	// Refresh rebuilds trees and images even when cached (to pick up
	// Debian updates).
	Refresh bool
	// Pull applies to a manifest whose base is an OCI image (image = REF):
	// its platform, whether a tag is refused (RequireDigest), and whether
	// the reference is resolved on the registry again (Refresh; so does
	// Refresh above) instead of using the digest it was pinned to.
	Pull PullOptions
}

// NotBuiltError is returned by ResolveImage for a template that has no
// artifact yet; Build makes it.
// ErrNoImage means a name is neither a template, a built image nor a digest.
var ErrNoImage = errors.New("no image")

type NotBuiltError struct{ Template string }

func (e *NotBuiltError) Error() string {
	return fmt.Sprintf("template %q is not built yet (mvmctl build --template %s)", e.Template, e.Template)
}

// ErrArtifactInUse is returned by RemoveArtifact for an image a sandbox uses.
var ErrArtifactInUse = errors.New("artifact is in use")

type layout struct{ root string }

func layoutOf(d paths.Dirs) layout          { return layout{d.Images()} }
func (l layout) artifacts() string          { return filepath.Join(l.root, "artifacts") }
func (l layout) artifact(hex string) string { return filepath.Join(l.root, "artifacts", hex) }
func (l layout) index(key string) string    { return filepath.Join(l.root, "rootfs-index", key+".json") }
func (l layout) name(name string) string    { return filepath.Join(l.root, "names", name+".json") }
func (l layout) tree(key string) string     { return filepath.Join(l.root, "trees", key) }
func (l layout) lock(key string) string     { return filepath.Join(l.root, "locks", key+".lock") }
func (l layout) tmp() string                { return filepath.Join(l.root, "tmp") }

// buildPlan is everything an image is made of.
type buildPlan struct {
	tpl      Template
	packages []string // all packages (template + extra), sorted
	extra    []string
	m        *manifest.Manifest // nil for a bare template
	cfg      RootfsConfig
	source   string
	busybox  string // sha256 of the host busybox (minimal)
	treeKey  string
	imageKey string
	files    int
	bytes    int64
	oci      *oci.Image // the base image of a manifest with image = REF
}

func hashKey(parts ...any) string {
	b, _ := json.Marshal(parts)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func fileSHA(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// hashSources hashes the content, modes and layout of every file mapping.
func hashSources(m *manifest.Manifest) (key string, files int, size int64, err error) {
	h := sha256.New()
	for _, fm := range m.Files {
		src := m.SourcePath(fm)
		fmt.Fprintf(h, "map %q %q %q\n", fm.Guest, fm.Source, fm.Exclude)
		if _, err := os.Lstat(src); errors.Is(err, os.ErrNotExist) && fm.Source == "." {
			continue
		}
		ex := map[string]bool{}
		for _, e := range fm.Exclude {
			ex[path.Clean(e)] = true
		}
		err = filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(src, p)
			rel = filepath.ToSlash(rel)
			if rel != "." && ex[rel] {
				if de.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			info, err := de.Info()
			if err != nil {
				return err
			}
			mode := info.Mode()
			switch {
			case mode.IsDir():
				fmt.Fprintf(h, "d %q %o\n", rel, mode.Perm())
			case mode.IsRegular():
				sum, err := fileSHA(p)
				if err != nil {
					return err
				}
				files++
				size += info.Size()
				fmt.Fprintf(h, "f %q %o %s\n", rel, mode.Perm(), sum)
			case mode&os.ModeSymlink != 0:
				t, err := os.Readlink(p)
				if err != nil {
					return err
				}
				files++
				fmt.Fprintf(h, "l %q %q\n", rel, t)
			}
			return nil
		})
		if err != nil {
			return "", 0, 0, err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), files, size, nil
}

// makePlan resolves the template and computes the input keys.
func makePlan(m *manifest.Manifest, templateName string, opts BuildOptions) (*buildPlan, error) {
	if templateName == "" && m != nil {
		templateName = m.Template
	}
	if templateName == "" {
		return nil, errors.New("no template: give one (--template) or a directory with an mvm.toml")
	}
	tpl, err := ResolveTemplate(templateName)
	if err != nil {
		return nil, err
	}
	p := &buildPlan{tpl: tpl, m: m}
	set := map[string]bool{}
	for _, x := range tpl.Packages {
		set[x] = true
	}
	if m != nil {
		for _, x := range m.Packages {
			if !set[x] {
				p.extra = append(p.extra, x)
			}
			set[x] = true
		}
	}
	for x := range set {
		p.packages = append(p.packages, x)
	}
	sort.Strings(p.packages)
	sort.Strings(p.extra)
	if !tpl.debian() && len(p.extra) > 0 {
		return nil, fmt.Errorf("template %s has no package manager: packages %s need a Debian-based template (debian, python, node)", tpl.Name, strings.Join(p.extra, ", "))
	}

	p.cfg = RootfsConfig{Profile: manifest.DefaultProfile, Workdir: manifest.DefaultWorkdir, Template: tpl.Name}
	if opts.Profile != "" {
		if opts.Profile != manifest.ProfileDev && opts.Profile != manifest.ProfileSealed {
			return nil, fmt.Errorf("profile must be %q or %q, got %q", manifest.ProfileDev, manifest.ProfileSealed, opts.Profile)
		}
	}
	var filesKey string
	if m != nil {
		p.cfg.Profile = m.Profile
		p.cfg.Env = m.Env
		p.cfg.Command = m.Command
		p.cfg.Workdir = m.Workdir
		p.cfg.Name = m.Name
		p.cfg.CPUs = m.CPUs
		p.cfg.MemoryMiB = m.MemoryMiB
		p.cfg.DiskMiB = m.DiskMiB
		p.cfg.Network = m.Network
		p.cfg.Allow = m.Allow
		p.source = m.Dir
		filesKey, p.files, p.bytes, err = hashSources(m)
		if err != nil {
			return nil, fmt.Errorf("hash build files: %w", err)
		}
	} else {
		p.source = "template:" + tpl.Name
		p.cfg.DiskMiB = manifest.DefaultDiskMiB
	}
	if opts.Profile != "" {
		p.cfg.Profile = opts.Profile
	}

	if tpl.debian() {
		p.treeKey = hashKey(rootfsFormat, "debian", tpl.Suite, p.packages, rootfs.DpkgExcludes)
	} else {
		if err := rootfs.CheckStaticBusybox(rootfs.HostBusybox); err != nil {
			return nil, err
		}
		p.busybox, err = fileSHA(rootfs.HostBusybox)
		if err != nil {
			return nil, err
		}
		p.treeKey = hashKey(rootfsFormat, "minimal", p.busybox)
	}
	p.imageKey = hashKey(rootfsFormat, "image", p.treeKey, p.cfg, filesKey)
	return p, nil
}

type indexEntry struct {
	Digest string `json:"digest"`
}

// lookup returns the cached artifact for an input key, if any.
func lookup(l layout, key string) (*Artifact, bool) {
	raw, err := os.ReadFile(l.index(key))
	if err != nil {
		return nil, false
	}
	var idx indexEntry
	if json.Unmarshal(raw, &idx) != nil || !validRootfsDigest(idx.Digest) {
		return nil, false
	}
	a, err := loadArtifact(l, strings.TrimPrefix(idx.Digest, "sha256:"))
	if err != nil {
		return nil, false
	}
	return a, true
}

func validRootfsDigest(d string) bool {
	h, ok := strings.CutPrefix(d, "sha256:")
	return ok && validHex(h) && len(h) == 64
}

func validHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return s != ""
}

func loadArtifact(l layout, id string) (*Artifact, error) {
	dir := l.artifact(id)
	raw, err := os.ReadFile(filepath.Join(dir, "artifact.json"))
	if err != nil {
		return nil, err
	}
	var a Artifact
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "artifact.json"), err)
	}
	if a.ID() != id {
		return nil, fmt.Errorf("%s: digest %s does not match its directory", dir, a.Digest)
	}
	a.Path = filepath.Join(dir, RootfsFile)
	st, err := os.Stat(a.Path)
	if err != nil {
		return nil, err
	}
	if st.Size() != a.Size {
		return nil, fmt.Errorf("%s: size %d, artifact.json says %d", a.Path, st.Size(), a.Size)
	}
	return &a, nil
}

// UnknownPackageError names the packages a Debian suite does not have.
type UnknownPackageError = rootfs.UnknownPackageError

// Build makes (or finds in the cache) the root filesystem artifact for a
// build directory or a bare template.
//
// dir is the manifest directory ("" for a bare template). templateName,
// when not empty, overrides the manifest's template. progress (may be nil)
// receives phase events. A second build of the same input (template,
// packages, file contents and modes, image configuration) is a cache hit
// that runs neither mmdebstrap nor mkfs.
//
// A build has four steps, each its own function: resolve (manifest and
// template to a plan and its input key), stage (the cached tree, hard
// linked, plus the manifest's files and the image configuration), pack
// (ext4 image and its digest) and publish (artifact directory and index
// entry, renamed into the cache).
func Build(ctx context.Context, d paths.Dirs, dir, templateName string, opts BuildOptions, progress func(Event)) (*Artifact, error) {
	if err := cache.Secure(d.Cache); err != nil {
		return nil, err
	}
	b := &build{start: time.Now(), progress: progress, phase: PhaseResolve, l: layoutOf(d), refresh: opts.Refresh}
	b.emit(StatusStarted, "")
	plan, err := resolve(ctx, b, dir, templateName, opts)
	if err != nil {
		return b.fail(err)
	}
	a, hit, err := cache.Once(ctx, b.l.lock(plan.imageKey), opts.Refresh,
		func() (*Artifact, bool) { return lookup(b.l, plan.imageKey) },
		func() (*Artifact, error) {
			b.emit(StatusDone, "template %s, %d package(s), %d file(s)", plan.tpl.Name, len(plan.packages), plan.files)
			return b.make(ctx, plan)
		})
	if err != nil {
		return b.fail(err)
	}
	if hit {
		a.Cached = true
		if b.phase == PhaseResolve {
			b.emit(StatusDone, "cache hit: %s (%s)", a.Digest, plan.tpl.Name)
		}
	}
	a.Repinned = b.repinned
	// The name now means what was just built, cache hit or not: two
	// directories that declare one name are resolved to the last built.
	if a.Name != "" && safeImageName(a.Name) {
		idx, _ := json.Marshal(indexEntry{Digest: a.Digest})
		if err := cache.WriteFile(b.l.name(a.Name), idx, cache.FileMode); err != nil {
			return b.fail(fmt.Errorf("record image name %s: %w", a.Name, err))
		}
	}
	return a, nil
}

// safeImageName reports whether name can be a file name in the names
// index (manifest names are 1-63 of a-z, 0-9 and '-').
func safeImageName(name string) bool {
	if name == "" || len(name) > 63 || name[0] == '-' {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// lookupName is the artifact a name was last built as.
func lookupName(l layout, name string) (*Artifact, bool) {
	if !safeImageName(name) {
		return nil, false
	}
	raw, err := os.ReadFile(l.name(name))
	if err != nil {
		return nil, false
	}
	var idx indexEntry
	if json.Unmarshal(raw, &idx) != nil || !validRootfsDigest(idx.Digest) {
		return nil, false
	}
	a, err := loadArtifact(l, strings.TrimPrefix(idx.Digest, "sha256:"))
	if err != nil || a.Name != name {
		return nil, false
	}
	return a, true
}

// build carries one build's progress reporting.
type build struct {
	start    time.Time
	progress func(Event)
	phase    string
	l        layout
	refresh  bool
	repinned *Repin // the pin this build moved, if any
}

func (b *build) emit(status, format string, args ...any) {
	if b.progress != nil {
		b.progress(Event{Time: time.Now().UTC(), Phase: b.phase, Status: status, Message: fmt.Sprintf(format, args...)})
	}
}

func (b *build) fail(err error) (*Artifact, error) {
	b.emit(StatusFailed, "%v", err)
	return nil, err
}

// resolve loads the manifest (unless given) and makes the build plan.
func resolve(ctx context.Context, b *build, dir, templateName string, opts BuildOptions) (*buildPlan, error) {
	m := opts.Manifest
	if m == nil && dir != "" {
		var err error
		if m, err = manifest.Load(dir); err != nil {
			return nil, err
		}
	}
	if m != nil && m.Image != "" && templateName == "" {
		return makeOCIPlan(ctx, b, m, opts.Pull, opts.Refresh || opts.Pull.Refresh)
	}
	return makePlan(m, templateName, opts)
}

// make runs stage, pack and publish in a private work directory, under
// the image key's lock.
func (b *build) make(ctx context.Context, plan *buildPlan) (*Artifact, error) {
	b.phase = PhaseBootstrap
	if len(plan.extra) > 0 {
		b.phase = PhasePackages
	}
	tree, err := ensureTree(ctx, b.l, plan, b.refresh, func(status, msg string) { b.emit(status, "%s", msg) })
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(b.l.tmp(), cache.DirMode); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(b.l.tmp(), "build-")
	if err != nil {
		return nil, err
	}
	defer rootfs.SafeRemoveAll(work)

	b.phase = PhaseFiles
	b.emit(StatusStarted, "")
	staged, err := b.stage(ctx, plan, tree, filepath.Join(work, "root"))
	if err != nil {
		return nil, err
	}
	b.emit(StatusDone, "%d file(s), %d bytes", staged.files, staged.bytes)

	b.phase = PhasePack
	b.emit(StatusStarted, "")
	img := filepath.Join(work, RootfsFile)
	sum, size, err := pack(ctx, plan, staged.root, img)
	if err != nil {
		return nil, err
	}
	b.emit(StatusDone, "sha256:%s, %d bytes", sum, size)

	b.phase = PhaseRecord
	b.emit(StatusStarted, "")
	a := &Artifact{
		Digest: "sha256:" + sum, Size: size, Format: "ext4",
		Template: plan.tpl.Name, Suite: plan.tpl.Suite, Packages: plan.packages, Extra: plan.extra,
		Created: time.Now().UTC(),
		Profile: plan.cfg.Profile, Env: plan.cfg.Env, Command: plan.cfg.Command, Workdir: plan.cfg.Workdir,
		Name: plan.cfg.Name, CPUs: plan.cfg.CPUs, MemoryMiB: plan.cfg.MemoryMiB, DiskMiB: plan.cfg.DiskMiB,
		Network: plan.cfg.Network, Allow: plan.cfg.Allow,
		Source: plan.source, InputKey: plan.imageKey, Files: staged.files, FileBytes: staged.bytes,
		BuildMS: time.Since(b.start).Milliseconds(),
	}
	if im := plan.oci; im != nil {
		a.OCI = &OCIInfo{Ref: im.Ref, Repo: im.Repo, Digest: im.Digest, Platform: im.Platform,
			Config: im.Config, User: plan.cfg.User, Layers: im.Layers()}
		if plan.m == nil || len(plan.m.Command) == 0 {
			a.Entrypoint = im.Config.Entrypoint
		}
	}
	if a, err = publish(b.l, plan.imageKey, work, img, a); err != nil {
		return nil, err
	}
	b.emit(StatusDone, "%s", a.Digest)
	return a, nil
}

// stagedTree is a tree ready to pack.
type stagedTree struct {
	root  string
	files int
	bytes int64
}

// stage makes root a hard-linked copy of the cached tree and adds the
// manifest's files, the workdir and the image configuration, with the
// fixed time on everything the build wrote.
func (b *build) stage(ctx context.Context, plan *buildPlan, tree, root string) (*stagedTree, error) {
	if err := rootfs.LinkTree(ctx, tree, root); err != nil {
		return nil, err
	}
	st := &stagedTree{root: root}
	if plan.oci != nil {
		u, err := resolveUser(root, plan.oci.Config.User)
		if err != nil {
			return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "image %s: USER %q: %v", plan.oci.Ref, plan.oci.Config.User, err)
		}
		plan.cfg.User = u
	}
	if m := plan.m; m != nil {
		for _, fm := range m.Files {
			src := m.SourcePath(fm)
			if _, err := os.Lstat(src); errors.Is(err, os.ErrNotExist) && fm.Source == "." {
				continue
			}
			n, nb, err := rootfs.CopyIn(root, src, fm.Guest, fm.Exclude, func(rel string) {
				b.emit(StatusProgress, "skipped %s (not a regular file, directory or symlink)", filepath.Join(fm.Source, rel))
			})
			if err != nil {
				return nil, fmt.Errorf("copy %s to %s: %w", fm.Source, fm.Guest, err)
			}
			st.files += n
			st.bytes += nb
		}
	}
	if _, err := rootfs.MkdirAllInRoot(root, plan.cfg.Workdir); err != nil {
		return nil, fmt.Errorf("workdir %s: %w", plan.cfg.Workdir, err)
	}
	cfgJSON, err := json.MarshalIndent(plan.cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := rootfs.WriteGuestFile(root, RootfsConfigPath, append(cfgJSON, '\n'), 0o644); err != nil {
		return nil, err
	}
	// directories the build wrote into get the fixed time too
	for _, g := range touchedDirs(plan, plan.m) {
		if h, err := rootfs.ResolveInRoot(root, g); err == nil {
			if fi, err := os.Lstat(h); err == nil && fi.IsDir() {
				_ = rootfs.SetTime(h)
			}
		}
	}
	return st, nil
}

// pack makes the ext4 image img from the staged tree and returns its
// sha256 (hex) and size. The image key seeds the file system's UUID, so
// the bytes depend only on the inputs.
func pack(ctx context.Context, plan *buildPlan, root, img string) (string, int64, error) {
	var seed [16]byte
	k, _ := hex.DecodeString(plan.imageKey)
	copy(seed[:], k)
	forceRoot := !plan.tpl.debian()
	if plan.oci != nil {
		forceRoot = os.Geteuid() != 0 // an OCI image's owners are kept
	}
	if err := rootfs.Pack(ctx, root, img, seed, forceRoot); err != nil {
		return "", 0, err
	}
	sum, err := fileSHA(img)
	if err != nil {
		return "", 0, err
	}
	st, err := os.Stat(img)
	if err != nil {
		return "", 0, err
	}
	return sum, st.Size(), nil
}

// publish moves the image and its record into artifacts/<digest>/ and
// points the input key's index entry at it. When the same bytes are
// already cached (built from other inputs, or refreshed without change),
// the existing record is kept and returned.
func publish(l layout, key, work, img string, a *Artifact) (*Artifact, error) {
	pub := filepath.Join(work, "publish")
	if err := os.Mkdir(pub, cache.DirMode); err != nil {
		return nil, err
	}
	if err := os.Rename(img, filepath.Join(pub, RootfsFile)); err != nil {
		return nil, err
	}
	meta, _ := json.MarshalIndent(a, "", "  ")
	if err := cache.WriteFile(filepath.Join(pub, "artifact.json"), append(meta, '\n'), cache.FileMode); err != nil {
		return nil, err
	}
	id := a.ID()
	good := func(string) bool { _, err := loadArtifact(l, id); return err == nil }
	published, err := cache.PublishDir(pub, l.artifact(id), filepath.Join(work, "broken"), good)
	if err != nil {
		return nil, err
	}
	if !published {
		if a, err = loadArtifact(l, id); err != nil {
			return nil, err
		}
	} else {
		a.Path = filepath.Join(l.artifact(id), RootfsFile)
	}
	idx, _ := json.Marshal(indexEntry{Digest: a.Digest})
	if err := cache.WriteFile(l.index(key), idx, cache.FileMode); err != nil {
		return nil, err
	}
	return a, nil
}

// touchedDirs lists guest directories whose mtime the build changed.
func touchedDirs(p *buildPlan, m *manifest.Manifest) []string {
	set := map[string]bool{"/": true}
	add := func(g string) {
		for g = path.Dir(g); ; g = path.Dir(g) {
			set[g] = true
			if g == "/" {
				break
			}
		}
	}
	add(RootfsConfigPath)
	add(p.cfg.Workdir + "/x")
	if m != nil {
		for _, f := range m.Files {
			add(f.Guest)
		}
	}
	out := make([]string, 0, len(set))
	for g := range set {
		out = append(out, g)
	}
	// deepest first
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// ensureTree returns the cached tree for the plan, making it if missing.
func ensureTree(ctx context.Context, l layout, p *buildPlan, refresh bool, progress func(status, msg string)) (string, error) {
	final := l.tree(p.treeKey)
	cached := func() (string, bool) {
		fi, err := os.Stat(final)
		return final, err == nil && fi.IsDir()
	}
	tree, hit, err := cache.Once(ctx, l.lock("tree-"+p.treeKey), refresh, cached, func() (string, error) {
		return makeTree(ctx, l, p, progress)
	})
	if hit {
		progress(StatusDone, "cached tree "+p.treeKey[:12])
	}
	return tree, err
}

// makeTree builds the plan's tree in a work directory and publishes it as
// trees/<key>, replacing an old one (refresh): builds still using the old
// tree hold hard links to its files.
func makeTree(ctx context.Context, l layout, p *buildPlan, progress func(status, msg string)) (string, error) {
	if err := os.MkdirAll(l.tmp(), cache.DirMode); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(l.tmp(), "tree-")
	if err != nil {
		return "", err
	}
	defer rootfs.SafeRemoveAll(work)
	target := filepath.Join(work, "root")
	t0 := time.Now()
	if p.oci != nil {
		progress(StatusStarted, fmt.Sprintf("unpack %s (%s)", p.oci.Ref, p.oci.Digest))
		if err := unpackTree(ctx, p.oci, target); err != nil {
			return "", err
		}
	} else if p.tpl.debian() {
		progress(StatusStarted, fmt.Sprintf("mmdebstrap %s: %s", p.tpl.Suite, strings.Join(p.packages, " ")))
		if err := rootfs.Debootstrap(ctx, p.tpl.Suite, p.packages, target, func(s string) { progress(StatusProgress, s) }); err != nil {
			return "", err
		}
	} else {
		progress(StatusStarted, "busybox tree from "+rootfs.HostBusybox)
		if err := os.Mkdir(target, 0o755); err != nil { // the guest's /
			return "", err
		}
		if err := rootfs.MinimalTree(ctx, target, rootfs.HostBusybox); err != nil {
			return "", err
		}
	}
	final := l.tree(p.treeKey)
	if _, err := cache.PublishDir(target, final, filepath.Join(work, "old"), nil); err != nil {
		return "", err
	}
	progress(StatusDone, fmt.Sprintf("tree %s in %.1fs", p.treeKey[:12], time.Since(t0).Seconds()))
	return final, nil
}

// ListArtifacts returns every cached artifact, newest first.
func ListArtifacts(d paths.Dirs) ([]*Artifact, error) {
	l := layoutOf(d)
	ents, err := os.ReadDir(l.artifacts())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Artifact
	for _, e := range ents {
		if !e.IsDir() || len(e.Name()) != 64 || !validHex(e.Name()) {
			continue
		}
		a, err := loadArtifact(l, e.Name())
		if err != nil {
			continue
		}
		out = append(out, a)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].Digest < out[j].Digest
	})
	return out, nil
}

// findArtifact resolves a digest ("sha256:<hex>", "<hex>" or a unique
// prefix of at least 4 hex digits) to an artifact.
func findArtifact(d paths.Dirs, idOrPrefix string) (*Artifact, error) {
	id := strings.ToLower(strings.TrimPrefix(idOrPrefix, "sha256:"))
	if len(id) < 4 || len(id) > 64 || !validHex(id) {
		return nil, fmt.Errorf("%w %q (want a digest or a digest prefix of at least 4 hex digits)", ErrNoImage, idOrPrefix)
	}
	all, err := ListArtifacts(d)
	if err != nil {
		return nil, err
	}
	var match []*Artifact
	for _, a := range all {
		if strings.HasPrefix(a.ID(), id) {
			match = append(match, a)
		}
	}
	switch len(match) {
	case 0:
		return nil, fmt.Errorf("%w %q", ErrNoImage, idOrPrefix)
	case 1:
		return match[0], nil
	default:
		ids := make([]string, len(match))
		for i, a := range match {
			ids[i] = a.ShortID()
		}
		return nil, fmt.Errorf("image prefix %q is ambiguous: %s", idOrPrefix, strings.Join(ids, ", "))
	}
}

// ResolveImage resolves a template name (its bare build), an image name
// (from a manifest's name key, newest first) or a digest prefix to a cached
// artifact. An image reference (a name with ":" or "/") resolves to its
// last pull, or *NotPulledError. A template that has not been built yet gives *NotBuiltError;
// building it is the caller's job (Build).
func ResolveImage(d paths.Dirs, name string) (*Artifact, error) {
	if oci.IsReference(name) {
		return resolveRef(d, name)
	}
	if _, err := ResolveTemplate(name); err == nil {
		plan, err := makePlan(nil, name, BuildOptions{})
		if err != nil {
			return nil, err
		}
		if a, ok := lookup(layoutOf(d), plan.imageKey); ok {
			return a, nil
		}
		return nil, &NotBuiltError{Template: name}
	}
	if a, ok := lookupName(layoutOf(d), name); ok {
		return a, nil
	}
	all, err := ListArtifacts(d)
	if err != nil {
		return nil, err
	}
	for _, a := range all {
		if a.Name != "" && a.Name == name {
			return a, nil
		}
	}
	a, err := findArtifact(d, name)
	if err != nil {
		var ut *UnknownTemplateError
		if _, terr := ResolveTemplate(name); errors.As(terr, &ut) && !validHex(strings.TrimPrefix(name, "sha256:")) {
			return nil, fmt.Errorf("%w %q: not an image name or digest, and %v", ErrNoImage, name, terr)
		}
		return nil, err
	}
	return a, nil
}

// RemoveArtifact deletes a cached artifact (by digest or unique prefix)
// and the index entries that point to it. inUse (may be nil) is asked with
// the "sha256:<hex>" digest; when it says yes the artifact is kept and the
// error wraps ErrArtifactInUse. Cached trees are kept.
func RemoveArtifact(d paths.Dirs, idOrPrefix string, inUse func(digest string) bool) (*Artifact, error) {
	var a *Artifact
	var err error
	if oci.IsReference(idOrPrefix) {
		a, err = resolveRef(d, idOrPrefix)
	} else {
		a, err = findArtifact(d, idOrPrefix)
	}
	if err != nil {
		return nil, err
	}
	if inUse != nil && inUse(a.Digest) {
		return nil, fmt.Errorf("image %s: %w by a sandbox", a.ShortID(), ErrArtifactInUse)
	}
	l := layoutOf(d)
	unlock, err := cache.Lock(context.Background(), l.lock("artifact-"+a.ID()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	// index entries first, so that no build resolves to a missing artifact
	for _, idxDir := range []string{filepath.Dir(l.index("x")), filepath.Dir(l.name("x")), filepath.Dir(l.ref("x"))} {
		ents, err := os.ReadDir(idxDir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			p := filepath.Join(idxDir, e.Name())
			raw, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			var idx indexEntry
			if json.Unmarshal(raw, &idx) == nil && idx.Digest == a.Digest {
				_ = os.Remove(p)
			}
		}
	}
	if err := os.MkdirAll(l.tmp(), cache.DirMode); err != nil {
		return nil, err
	}
	trash, err := os.MkdirTemp(l.tmp(), "rm-")
	if err != nil {
		return nil, err
	}
	if err := os.Rename(l.artifact(a.ID()), filepath.Join(trash, "a")); err != nil {
		return nil, err
	}
	return a, rootfs.SafeRemoveAll(trash)
}

// RootfsBuildTools reports missing host tools for building the given
// template (for doctor-style checks).
func RootfsBuildTools(t Template) []string {
	need := []string{"mkfs.ext4", "cp"}
	if t.debian() {
		need = append(need, "mmdebstrap")
	}
	var missing []string
	for _, n := range need {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	return missing
}
