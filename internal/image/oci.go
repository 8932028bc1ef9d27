package image

// OCI images as sandbox images: a pulled or imported image is unpacked
// (internal/image/oci), given /etc/mvm/image.json and packed like the
// templates. The artifact's input key is the manifest digest and the
// configuration derived from it, so one digest always gives the same
// bytes. Cache layout additions, under d.Images():
//
//	oci-refs/<sha256(ref)>.json    reference -> artifact digest (last pull)
//	oci-pins/<sha256(ref, platform)>.json  reference -> resolved manifest
//	                               digest, repository, configuration and
//	                               layer count (last resolution)
//
// A manifest or declaration on image = REF resolves REF on its registry
// once and builds from the pin after that: a rebuild of an unchanged
// input asks the registry nothing (the tree is cached by digest). A
// refresh (BuildOptions.Refresh, PullOptions.Refresh: `mvmctl build
// --refresh`) or `mvmctl image pull REF` resolves it again and replaces
// the pin. If the tree is gone, the layers are fetched by the pinned
// digest, never by the tag.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/image/cache"
	"github.com/mvm-sandbox/mvm/internal/image/oci"
	"github.com/mvm-sandbox/mvm/internal/image/rootfs"
	"github.com/mvm-sandbox/mvm/internal/manifest"
	"github.com/mvm-sandbox/mvm/internal/paths"
)

// Phases of a pull or import, besides PhasePack and PhaseRecord.
const (
	PhasePull   = "pull"
	PhaseUnpack = "unpack"
)

// TemplateOCI is the Template field of artifacts made from OCI images.
const TemplateOCI = "oci"

// OCIInfo records where an OCI-based artifact came from.
type OCIInfo struct {
	Ref      string     `json:"ref"`             // as given (or "import:<file>")
	Repo     string     `json:"repo,omitempty"`  // canonical repository
	Digest   string     `json:"digest"`          // resolved manifest digest
	Platform string     `json:"platform"`        // os/arch
	Config   oci.Config `json:"config"`          // the image's own configuration
	User     *ImageUser `json:"user,omitempty"`  // USER, resolved to numbers
	Layers   int        `json:"layers"`          // how many layers were applied
	Skipped  int        `json:"skipped_devices"` // device nodes, fifos, sockets left out
}

// ImageUser is the numeric user processes run as (the agent reads it from
// /etc/mvm/image.json).
type ImageUser struct {
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	Home string `json:"home,omitempty"`
}

// NotPulledError is returned by ResolveImage for a reference that is not
// in the cache; Pull fetches it.
type NotPulledError struct{ Ref string }

func (e *NotPulledError) Error() string {
	return fmt.Sprintf("image %s is not pulled yet (mvmctl image pull %s)", e.Ref, e.Ref)
}

// PullOptions adjust a pull.
type PullOptions struct {
	Platform      string
	RequireDigest bool
	// Refresh unpacks and packs again even when cached; for a build on an
	// OCI image it also resolves the reference again instead of using its
	// pin.
	Refresh bool
}

// PullEvent is a pull's per-layer progress.
type PullEvent = oci.Event

func (l layout) ref(ref string) string {
	return filepath.Join(l.root, "oci-refs", hashKey("ref", ref)+".json")
}

func (l layout) pin(ref, platform string) string {
	return filepath.Join(l.root, "oci-pins", hashKey("pin", ref, platform)+".json")
}

// pinRecord is a reference's last resolution.
type pinRecord struct {
	oci.Pin
	Resolved time.Time `json:"resolved"`
}

// maxPinBytes caps a pin file (a configuration with a long environment
// is a few KiB).
const maxPinBytes = 1 << 20

// readPin returns the pin of ref for platform, if a valid one is kept.
func readPin(l layout, ref, platform string) (oci.Pin, bool) {
	f, err := os.Open(l.pin(ref, platform))
	if err != nil {
		return oci.Pin{}, false
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxPinBytes+1))
	if err != nil || len(raw) > maxPinBytes {
		return oci.Pin{}, false
	}
	var rec pinRecord
	if json.Unmarshal(raw, &rec) != nil || rec.Ref != ref || rec.Platform != platform || !validRootfsDigest(rec.Digest) || rec.Repo == "" {
		return oci.Pin{}, false
	}
	return rec.Pin, true
}

// writePin records im as the resolution of its reference for platform.
func writePin(l layout, platform string, im *oci.Image) error {
	p := im.Pin()
	p.Platform = platform
	raw, err := json.Marshal(pinRecord{Pin: p, Resolved: time.Now().UTC()})
	if err != nil {
		return err
	}
	if err := cache.WriteFile(l.pin(im.Ref, platform), raw, cache.FileMode); err != nil {
		return fmt.Errorf("record the resolution of %s: %w", im.Ref, err)
	}
	return nil
}

// resolvePinned resolves ref for a build: from its pin unless refresh is
// asked or there is none, else on the registry (and pins the answer). The
// digest rule (RequireDigest) is applied first, whatever is pinned.
func (b *build) resolvePinned(ctx context.Context, ref string, o PullOptions, refresh bool) (*oci.Image, error) {
	if _, err := oci.CheckReference(ref, o.RequireDigest); err != nil {
		return nil, err
	}
	platform, err := oci.PlatformKey(o.Platform)
	if err != nil {
		return nil, err
	}
	po := oci.PullOptions{Platform: o.Platform, RequireDigest: o.RequireDigest}
	if !refresh {
		if p, ok := readPin(b.l, ref, platform); ok {
			if im, err := oci.FromPin(p, po); err == nil {
				b.emit(StatusProgress, "%s is pinned to %s (resolve it again: --refresh)", ref, p.Digest)
				return im, nil
			}
		}
	}
	im, err := oci.Resolve(ctx, ref, po)
	if err != nil {
		return nil, err
	}
	old, hadPin := readPin(b.l, ref, platform)
	if err := writePin(b.l, platform, im); err != nil {
		return nil, err
	}
	if hadPin && old.Digest != im.Digest {
		b.repinned = &Repin{Ref: ref, From: old.Digest, To: im.Digest}
		b.emit(StatusProgress, "%s moved: %s -> %s (pinned now)", ref, old.Digest, im.Digest)
	} else {
		b.emit(StatusProgress, "%s resolved to %s", ref, im.Digest)
	}
	return im, nil
}

// Repin is a pin a build or an image pull moved: the reference resolved
// again (a refresh, a pull) named another digest than the one pinned.
type Repin struct {
	Ref  string `json:"ref"`
	From string `json:"from"`
	To   string `json:"to"`
}

// Pull resolves ref on its registry and makes (or finds in the cache) its
// artifact. layers (may be nil) receives per-layer byte counts.
func Pull(ctx context.Context, d paths.Dirs, ref string, o PullOptions, progress func(Event), layers func(PullEvent)) (*Artifact, error) {
	b := &build{start: time.Now(), progress: progress, phase: PhaseResolve, l: layoutOf(d), refresh: o.Refresh}
	b.emit(StatusStarted, "%s", ref)
	im, err := oci.Resolve(ctx, ref, oci.PullOptions{Platform: o.Platform, RequireDigest: o.RequireDigest})
	if err != nil {
		return b.fail(err)
	}
	// a pull is the explicit way to move a reference: builds on it use
	// what it resolved to from now on; a moved pin is reported (Repinned),
	// a first one is not
	old, hadPin := readPin(b.l, im.Ref, im.Platform)
	if err := writePin(b.l, im.Platform, im); err != nil {
		return b.fail(err)
	}
	if hadPin && old.Digest != im.Digest {
		b.repinned = &Repin{Ref: im.Ref, From: old.Digest, To: im.Digest}
		b.emit(StatusDone, "%s moved: %s -> %s (pinned now, %s)", ref, old.Digest, im.Digest, im.Platform)
	} else {
		b.emit(StatusDone, "%s is %s (%s)", ref, im.Digest, im.Platform)
	}
	a, err := b.fromOCI(ctx, im, layers)
	if err != nil {
		return nil, err
	}
	a.Repinned = b.repinned
	return a, nil
}

// Import makes the artifact of a `docker save` or OCI-layout tarball (or
// an OCI layout directory).
func Import(ctx context.Context, d paths.Dirs, file string, progress func(Event), layers func(PullEvent)) (*Artifact, error) {
	b := &build{start: time.Now(), progress: progress, phase: PhaseResolve, l: layoutOf(d)}
	b.emit(StatusStarted, "%s", file)
	if err := os.MkdirAll(b.l.tmp(), cache.DirMode); err != nil {
		return b.fail(err)
	}
	work, err := os.MkdirTemp(b.l.tmp(), "import-")
	if err != nil {
		return b.fail(err)
	}
	defer rootfs.SafeRemoveAll(work)
	im, err := oci.Import(file, work)
	if err != nil {
		return b.fail(err)
	}
	b.emit(StatusDone, "%s is %s (%s)", file, im.Digest, im.Platform)
	return b.fromOCI(ctx, im, layers)
}

// ociConfig is the image.json of an OCI image before its user is resolved.
func ociConfig(im *oci.Image) RootfsConfig {
	c := RootfsConfig{Profile: manifest.ProfileDev, Template: TemplateOCI, DiskMiB: manifest.DefaultDiskMiB, Workdir: im.Config.WorkingDir}
	if c.Workdir == "" {
		c.Workdir = "/"
	}
	for _, kv := range im.Config.Env {
		k, v, _ := strings.Cut(kv, "=")
		if k == "" {
			continue
		}
		if c.Env == nil {
			c.Env = map[string]string{}
		}
		c.Env[k] = v
	}
	c.Command = append(append([]string(nil), im.Config.Entrypoint...), im.Config.Cmd...)
	return c
}

func (b *build) fromOCI(ctx context.Context, im *oci.Image, layers func(PullEvent)) (*Artifact, error) {
	cfg := ociConfig(im)
	key := hashKey(rootfsFormat, "oci", im.Digest, im.Platform, cfg)
	a, hit, err := cache.Once(ctx, b.l.lock(key), b.refresh,
		func() (*Artifact, bool) { return lookup(b.l, key) },
		func() (*Artifact, error) { return b.makeOCI(ctx, im, cfg, key, layers) })
	if err != nil {
		return b.fail(err)
	}
	if hit {
		a.Cached = true
		b.emit(StatusDone, "cache hit: %s (%s)", a.Digest, im.Digest)
	}
	if !strings.HasPrefix(im.Ref, "import:") {
		idx, _ := json.Marshal(indexEntry{Digest: a.Digest})
		if err := cache.WriteFile(b.l.ref(im.Ref), idx, cache.FileMode); err != nil {
			return b.fail(err)
		}
	}
	return a, nil
}

func (b *build) makeOCI(ctx context.Context, im *oci.Image, cfg RootfsConfig, key string, layers func(PullEvent)) (*Artifact, error) {
	if err := os.MkdirAll(b.l.tmp(), cache.DirMode); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(b.l.tmp(), "oci-")
	if err != nil {
		return nil, err
	}
	defer rootfs.SafeRemoveAll(work)
	root := filepath.Join(work, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, err
	}

	b.phase = PhaseUnpack
	b.emit(StatusStarted, "%s", im.Digest)
	u, err := im.Unpack(ctx, root, layers)
	if err != nil {
		return nil, unpackError(im, err)
	}
	b.emit(StatusDone, "%d device node(s) skipped", u.Skipped)

	b.phase = PhaseFiles
	user, err := resolveUser(root, im.Config.User)
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "image %s: USER %q: %v", im.Ref, im.Config.User, err)
	}
	for _, dir := range []string{"proc", "sys", "dev", "run", "tmp", "etc/mvm", cfg.Workdir} {
		if _, err := rootfs.MkdirAllInRoot(root, dir); err != nil {
			return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "image %s: /%s: %v", im.Ref, strings.TrimPrefix(dir, "/"), err)
		}
	}
	cfg.User = user
	cfgJSON, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := rootfs.WriteGuestFile(root, RootfsConfigPath, append(cfgJSON, '\n'), 0o644); err != nil {
		return nil, err
	}
	if err := rootfs.SetTimes(root); err != nil {
		return nil, err
	}

	b.phase = PhasePack
	b.emit(StatusStarted, "")
	img := filepath.Join(work, RootfsFile)
	var seed [16]byte
	k, _ := hex.DecodeString(key)
	copy(seed[:], k)
	if err := rootfs.Pack(ctx, root, img, seed, os.Geteuid() != 0); err != nil {
		return nil, err
	}
	sum, err := fileSHA(img)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(img)
	if err != nil {
		return nil, err
	}
	b.emit(StatusDone, "sha256:%s, %d bytes", sum, st.Size())

	b.phase = PhaseRecord
	a := &Artifact{
		Digest: "sha256:" + sum, Size: st.Size(), Format: "ext4", Template: TemplateOCI,
		Created: time.Now().UTC(), Profile: cfg.Profile, Env: cfg.Env, Command: cfg.Command, Entrypoint: im.Config.Entrypoint,
		Workdir: cfg.Workdir, DiskMiB: cfg.DiskMiB, Source: "oci:" + im.Ref, InputKey: key,
		BuildMS: time.Since(b.start).Milliseconds(),
		OCI: &OCIInfo{Ref: im.Ref, Repo: im.Repo, Digest: im.Digest, Platform: im.Platform,
			Config: im.Config, User: user, Layers: im.Layers(), Skipped: u.Skipped},
	}
	if a, err = publish(b.l, key, work, img, a); err != nil {
		return nil, err
	}
	b.emit(StatusDone, "%s", a.Digest)
	return a, nil
}

// unpackError gives an unpack failure its kind.
func unpackError(im *oci.Image, err error) error {
	switch {
	case errdefs.KindOf(err) != errdefs.Unknown:
		return err
	case errors.Is(err, oci.ErrDigestMismatch):
		return errdefs.New(errdefs.KindInvalidArgument, fmt.Errorf("image %s: %w (nothing was cached; the registry or the file is corrupt or was tampered with)", im.Ref, err))
	case errors.Is(err, oci.ErrUnsafeLayer):
		return errdefs.WithReason(errdefs.KindRefused, errdefs.ReasonUnsafe, fmt.Errorf("image %s: %w (nothing was cached)", im.Ref, err))
	case errors.Is(err, context.Canceled):
		return errdefs.Canceled(err)
	}
	return errdefs.New(errdefs.KindUnavailable, fmt.Errorf("image %s: %w", im.Ref, err))
}

// resolveUser turns an image's USER (name or number, with an optional
// ":group") into numbers, from the tree's /etc/passwd and /etc/group.
// "" and "root" are root (nil).
func resolveUser(root, spec string) (*ImageUser, error) {
	if spec == "" {
		return nil, nil
	}
	us, gs, hasGroup := strings.Cut(spec, ":")
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	passwd := readDB(r, "etc/passwd")
	u := &ImageUser{}
	if n, err := strconv.ParseUint(us, 10, 32); err == nil {
		u.UID, u.GID = uint32(n), uint32(n)
		for _, f := range passwd {
			if f[2] == us {
				if g, err := strconv.ParseUint(f[3], 10, 32); err == nil {
					u.GID = uint32(g)
				}
				u.Home = f[5]
			}
		}
	} else {
		found := false
		for _, f := range passwd {
			if f[0] == us {
				uid, err1 := strconv.ParseUint(f[2], 10, 32)
				gid, err2 := strconv.ParseUint(f[3], 10, 32)
				if err1 != nil || err2 != nil {
					return nil, fmt.Errorf("bad /etc/passwd entry for %s", us)
				}
				u.UID, u.GID, u.Home, found = uint32(uid), uint32(gid), f[5], true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("no user %q in the image's /etc/passwd", us)
		}
	}
	if hasGroup {
		if n, err := strconv.ParseUint(gs, 10, 32); err == nil {
			u.GID = uint32(n)
		} else {
			found := false
			for _, f := range readDB(r, "etc/group") {
				if f[0] == gs && len(f) >= 3 {
					if n, err := strconv.ParseUint(f[2], 10, 32); err == nil {
						u.GID, found = uint32(n), true
						break
					}
				}
			}
			if !found {
				return nil, fmt.Errorf("no group %q in the image's /etc/group", gs)
			}
		}
	}
	if u.UID == 0 && u.GID == 0 && u.Home == "" {
		return nil, nil
	}
	return u, nil
}

// readDB reads a colon-separated database (passwd: 7 fields, group: 4),
// capped at 4 MiB; lines with fewer than 4 fields are ignored. Symlinks
// are followed only inside the tree.
func readDB(r *os.Root, name string) [][]string {
	f, err := r.Open(name)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(&capReader{f: f, left: 4 << 20})
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		fs := strings.Split(string(line), ":")
		if len(fs) < 4 || strings.HasPrefix(fs[0], "#") {
			continue
		}
		for len(fs) < 7 {
			fs = append(fs, "")
		}
		out = append(out, fs)
	}
	return out
}

type capReader struct {
	f    *os.File
	left int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, errors.New("file too large")
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.f.Read(p)
	c.left -= int64(n)
	return n, err
}

// resolveRef finds the artifact a reference was last pulled to.
func resolveRef(d paths.Dirs, ref string) (*Artifact, error) {
	l := layoutOf(d)
	raw, err := os.ReadFile(l.ref(ref))
	if err == nil {
		var idx indexEntry
		if json.Unmarshal(raw, &idx) == nil && validRootfsDigest(idx.Digest) {
			if a, err := loadArtifact(l, strings.TrimPrefix(idx.Digest, "sha256:")); err == nil {
				return a, nil
			}
		}
	}
	return nil, &NotPulledError{Ref: ref}
}

// makeOCIPlan is the build plan of a manifest whose base is an OCI image
// (image = REF): the image's configuration gives the defaults, the
// manifest's keys override them (env is merged), and its files are added
// on the unpacked image, which is cached as a tree keyed by the manifest
// digest. The reference is resolved through its pin (resolvePinned).
func makeOCIPlan(ctx context.Context, b *build, m *manifest.Manifest, o PullOptions, refresh bool) (*buildPlan, error) {
	im, err := b.resolvePinned(ctx, m.Image, o, refresh)
	if err != nil {
		return nil, err
	}
	p := &buildPlan{tpl: Template{Name: TemplateOCI}, m: m, oci: im, source: m.Dir}
	p.cfg = ociConfig(im)
	p.cfg.Profile = m.Profile
	for k, v := range m.Env {
		if p.cfg.Env == nil {
			p.cfg.Env = map[string]string{}
		}
		p.cfg.Env[k] = v
	}
	if len(m.Command) > 0 {
		p.cfg.Command = m.Command
	}
	p.cfg.Workdir = m.Workdir
	p.cfg.Name, p.cfg.CPUs, p.cfg.MemoryMiB, p.cfg.DiskMiB = m.Name, m.CPUs, m.MemoryMiB, m.DiskMiB
	p.cfg.Network, p.cfg.Allow = m.Network, m.Allow
	filesKey, files, size, err := hashSources(m)
	if err != nil {
		return nil, fmt.Errorf("hash build files: %w", err)
	}
	p.files, p.bytes = files, size
	p.treeKey = hashKey(rootfsFormat, "oci-tree", im.Digest, im.Platform)
	p.imageKey = hashKey(rootfsFormat, "image", p.treeKey, p.cfg, filesKey)
	return p, nil
}

// unpackTree unpacks an OCI image as a cached tree: its layers plus the
// directories every guest needs, at the fixed time.
func unpackTree(ctx context.Context, im *oci.Image, target string) error {
	if err := os.Mkdir(target, 0o755); err != nil {
		return err
	}
	if _, err := im.Unpack(ctx, target, nil); err != nil {
		return unpackError(im, err)
	}
	for _, dir := range []string{"proc", "sys", "dev", "run", "tmp", "etc/mvm"} {
		if _, err := rootfs.MkdirAllInRoot(target, dir); err != nil {
			return errdefs.Errorf(errdefs.KindInvalidArgument, "image %s: /%s: %v", im.Ref, dir, err)
		}
	}
	return rootfs.SetTimes(target)
}
