// Package oci turns OCI and Docker images into root filesystem trees:
// resolving and pulling a reference from a registry (credentials from the
// Docker config and its credential helpers), importing `docker save` and
// OCI-layout tarballs, verifying every layer's digest while it streams,
// and unpacking the layers in order onto a staging root (see Unpacker).
//
// It knows nothing of the cache: internal/image packs the tree and keeps
// the artifact.
package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/zstd"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
)

// DefaultPlatform is what a pull selects from a multi-platform index.
const DefaultPlatform = "linux/amd64"

// IsReference reports whether name is an image reference rather than a
// template, an image name or a digest: references contain ":" or "/",
// template names never do ("sha256:..." is a digest).
func IsReference(n string) bool {
	if strings.HasPrefix(n, "sha256:") {
		return false
	}
	return strings.ContainsAny(n, ":/")
}

// Config is what the image's configuration gives the sandbox.
type Config struct {
	Entrypoint   []string `json:"entrypoint,omitempty"`
	Cmd          []string `json:"cmd,omitempty"`
	Env          []string `json:"env,omitempty"`
	WorkingDir   string   `json:"working_dir,omitempty"`
	User         string   `json:"user,omitempty"`
	ExposedPorts []string `json:"exposed_ports,omitempty"`
}

// Image is a resolved image, ready to unpack.
type Image struct {
	// Ref is the reference as given (or "import:<file>").
	Ref string
	// Repo is the canonical repository ("index.docker.io/library/python").
	Repo string
	// Digest is the manifest digest ("sha256:...") the reference resolved to.
	Digest   string
	Platform string
	Config   Config
	img      v1.Image
	// an image made from a Pin is fetched (by digest) only when its layers
	// are needed
	layers int
	pull   PullOptions
}

// Pin is what resolving a reference found: enough to build from a cached
// tree without asking the registry again (internal/image keeps it).
type Pin struct {
	Ref      string `json:"ref"`
	Repo     string `json:"repo"`
	Digest   string `json:"digest"` // the platform's image manifest
	Platform string `json:"platform"`
	Config   Config `json:"config"`
	Layers   int    `json:"layers"`
}

// Pin is the image's resolution.
func (im *Image) Pin() Pin {
	return Pin{Ref: im.Ref, Repo: im.Repo, Digest: im.Digest, Platform: im.Platform, Config: im.Config, Layers: im.Layers()}
}

// FromPin is the image a Pin recorded. Nothing is fetched until Unpack
// needs the layers; then the manifest is fetched by the pinned digest
// (repo@digest), never by the reference's tag, and must give the pinned
// configuration.
func FromPin(p Pin, o PullOptions) (*Image, error) {
	if _, err := name.NewDigest(p.Repo + "@" + p.Digest); err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "pinned image %s: %v", p.Ref, err)
	}
	return &Image{Ref: p.Ref, Repo: p.Repo, Digest: p.Digest, Platform: p.Platform, Config: p.Config, layers: p.Layers, pull: o}, nil
}

// CheckReference parses ref and refuses a tag when digests are required;
// pinned reports whether ref names a digest.
func CheckReference(ref string, requireDigest bool) (pinned bool, err error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return false, errdefs.Errorf(errdefs.KindInvalidArgument, "image reference %q: %v", ref, err)
	}
	_, pinned = r.(name.Digest)
	if requireDigest && !pinned {
		return false, errdefs.Errorf(errdefs.KindRefused, "image reference %q is a tag and digests are required: pin it as %s@sha256:<digest> (mvmctl image pull prints the digest)", ref, r.Context().Name())
	}
	return pinned, nil
}

// PlatformKey is the platform a pull selects, normalised ("" =
// DefaultPlatform).
func PlatformKey(s string) (string, error) {
	p, err := parsePlatform(s)
	if err != nil {
		return "", err
	}
	return p.String(), nil
}

// fetch gets the manifest of an image made from a Pin, by its digest.
func (im *Image) fetch(ctx context.Context) error {
	if im.img != nil {
		return nil
	}
	d, err := name.NewDigest(im.Repo + "@" + im.Digest)
	if err != nil {
		return errdefs.Errorf(errdefs.KindInvalidArgument, "pinned image %s: %v", im.Ref, err)
	}
	p, err := parsePlatform(im.pull.Platform)
	if err != nil {
		return err
	}
	kc := im.pull.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	img, err := remote.Image(d, remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithPlatform(*p))
	if err != nil {
		return registryError(d.String(), err)
	}
	got, err := newImage(img, im.Ref, im.Repo)
	if err != nil {
		return err
	}
	gotCfg, _ := json.Marshal(got.Config)
	pinCfg, _ := json.Marshal(im.Config)
	if got.Digest != im.Digest || !bytes.Equal(gotCfg, pinCfg) {
		return errdefs.Errorf(errdefs.KindRefused, "pinned image %s: the registry's %s is not what was pinned (digest %s); resolve it again with --refresh", im.Ref, d, got.Digest)
	}
	im.img = img
	return nil
}

// PullOptions adjust a pull.
type PullOptions struct {
	Platform string // "" = DefaultPlatform
	// RequireDigest refuses a reference that is not pinned by digest.
	RequireDigest bool
	// Keychain finds credentials; nil = authn.DefaultKeychain (the Docker
	// config, $DOCKER_CONFIG, and its credential helpers).
	Keychain authn.Keychain
}

func parsePlatform(s string) (*v1.Platform, error) {
	if s == "" {
		s = DefaultPlatform
	}
	p, err := v1.ParsePlatform(s)
	if err != nil || p.OS == "" || p.Architecture == "" {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "platform %q: want os/arch[/variant], e.g. linux/amd64", s)
	}
	return p, nil
}

// Resolve resolves ref against its registry and selects the platform's
// image; nothing is downloaded but the manifest and the configuration.
func Resolve(ctx context.Context, ref string, o PullOptions) (*Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "image reference %q: %v", ref, err)
	}
	if _, err := CheckReference(ref, o.RequireDigest); err != nil {
		return nil, err
	}
	p, err := parsePlatform(o.Platform)
	if err != nil {
		return nil, err
	}
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithPlatform(*p))
	if err != nil {
		return nil, registryError(ref, err)
	}
	out, err := newImage(img, ref, r.Context().Name())
	if err != nil {
		return nil, err
	}
	out.Platform = p.String()
	return out, nil
}

// registryError gives a registry failure its kind and what to do next,
// by the HTTP status the registry answered (transport.Error).
func registryError(ref string, err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return errdefs.Errorf(errdefs.KindPermissionDenied, "pull %s: %v (log in with `docker login` or set DOCKER_CONFIG to a config with credentials for the registry)", ref, err)
		case http.StatusNotFound:
			return errdefs.Errorf(errdefs.KindNotFound, "pull %s: %v (check the name and tag)", ref, err)
		}
	}
	// go-containerregistry has no typed error for a platform an index lacks
	if strings.Contains(err.Error(), "no child with platform") {
		return errdefs.Errorf(errdefs.KindNotFound, "pull %s: %v (choose another --platform)", ref, err)
	}
	if errors.Is(err, context.Canceled) {
		return errdefs.Canceled(err)
	}
	return errdefs.Errorf(errdefs.KindUnavailable, "pull %s: %v", ref, err)
}

// Import opens a `docker save` tarball, an OCI image layout tarball or an
// OCI image layout directory holding one image. work is a private empty
// directory the caller removes after the unpack: a layout tarball is
// unpacked there first (through the same Unpacker as layers).
func Import(file, work string) (*Image, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindNotFound, "import %s: %v", file, err)
	}
	abs, _ := filepath.Abs(file)
	ref := "import:" + abs
	if fi.IsDir() {
		img, err := fromLayout(file)
		if err != nil {
			return nil, err
		}
		return newImage(img, ref, "")
	}
	if isLayoutTar(file) {
		if err := unpackTar(file, work); err != nil {
			return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "import %s: %v", file, err)
		}
		img, err := fromLayout(work)
		if err != nil {
			return nil, err
		}
		return newImage(img, ref, "")
	}
	img, err := tarball.ImageFromPath(file, nil)
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "import %s: not a docker save archive or an OCI image layout: %v", file, err)
	}
	return newImage(img, ref, "")
}

// isLayoutTar reports whether a tarball has an oci-layout member (and so
// is an OCI image layout rather than a docker save archive).
func isLayoutTar(file string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for i := 0; i < 1<<16; i++ {
		h, err := tr.Next()
		if err != nil {
			return false
		}
		if p, err := memberPath(h.Name); err == nil && p == "oci-layout" {
			return true
		}
	}
	return false
}

func unpackTar(file, dir string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	u, err := NewUnpacker(dir)
	if err != nil {
		return err
	}
	defer u.Close()
	return u.Layer(f)
}

func tagRef(tag string) *name.Tag {
	if tag == "" {
		return nil
	}
	t, err := name.NewTag(tag)
	if err != nil {
		return nil
	}
	return &t
}

func fromLayout(dir string) (v1.Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "import %s: not an OCI layout: %v", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "import %s: %v", dir, err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "import %s: %v", dir, err)
	}
	var imgs []v1.Descriptor
	for _, d := range m.Manifests {
		if d.MediaType.IsImage() {
			imgs = append(imgs, d)
		}
	}
	if len(imgs) != 1 {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "import %s: the layout holds %d images; mvm imports a layout with exactly one", dir, len(imgs))
	}
	img, err := idx.Image(imgs[0].Digest)
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "import %s: %v", dir, err)
	}
	return img, nil
}

func newImage(img v1.Image, ref, repo string) (*Image, error) {
	d, err := img.Digest()
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "image %s: manifest: %v", ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "image %s: configuration: %v", ref, err)
	}
	out := &Image{Ref: ref, Repo: repo, Digest: d.String(), img: img}
	if cf.OS != "" {
		out.Platform = cf.OS + "/" + cf.Architecture
		if cf.Variant != "" {
			out.Platform += "/" + cf.Variant
		}
	}
	c := cf.Config
	out.Config = Config{Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User}
	for p := range c.ExposedPorts {
		out.Config.ExposedPorts = append(out.Config.ExposedPorts, p)
	}
	sort.Strings(out.Config.ExposedPorts)
	return out, nil
}

// Event is progress of an unpack: one layer's compressed bytes.
type Event struct {
	Layer  int    `json:"layer"` // 1-based
	Of     int    `json:"of"`
	Digest string `json:"digest"`
	Done   int64  `json:"bytes"`
	Total  int64  `json:"total"`
	Final  bool   `json:"done,omitempty"`
}

// Unpack downloads (or reads) every layer in order, verifying its digest
// and size as it streams and the digest of its uncompressed tar stream
// against the configuration's rootfs.diff_ids, and applies it onto dir (an
// existing empty directory). A layer whose bytes do not match fails the
// whole unpack; the caller removes dir.
func (im *Image) Unpack(ctx context.Context, dir string, progress func(Event)) (*Unpacker, error) {
	if err := im.fetch(ctx); err != nil {
		return nil, err
	}
	layers, err := im.img.Layers()
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindUnavailable, "image %s: layers: %v", im.Ref, err)
	}
	cf, err := im.img.ConfigFile()
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "image %s: configuration: %v", im.Ref, err)
	}
	diffIDs := cf.RootFS.DiffIDs
	if len(diffIDs) != len(layers) {
		return nil, fmt.Errorf("%w: image %s: the configuration lists %d rootfs.diff_ids for %d layers", ErrDigestMismatch, im.Ref, len(diffIDs), len(layers))
	}
	u, err := NewUnpacker(dir)
	if err != nil {
		return nil, err
	}
	defer u.Close()
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := im.layer(ctx, u, l, diffIDs[i], i+1, len(layers), progress); err != nil {
			return nil, err
		}
	}
	return u, nil
}

func (im *Image) layer(ctx context.Context, u *Unpacker, l v1.Layer, diffID v1.Hash, n, of int, progress func(Event)) error {
	d, err := l.Digest()
	if err != nil {
		return err
	}
	size, err := l.Size()
	if err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return errdefs.Errorf(errdefs.KindUnavailable, "layer %d/%d %s: %v", n, of, d, err)
	}
	defer rc.Close()
	vr, err := verifyReader(rc, size, d)
	if err != nil {
		return err
	}
	cr := &countReader{r: vr, ctx: ctx, report: func(done int64, final bool) {
		if progress != nil {
			progress(Event{Layer: n, Of: of, Digest: d.String(), Done: done, Total: size, Final: final})
		}
	}}
	z, err := decompress(cr)
	if err != nil {
		return fmt.Errorf("layer %d/%d %s: %w", n, of, d, err)
	}
	// the uncompressed stream is what the configuration names (diff_id)
	plain, err := verifyReader(z, -1, diffID)
	if err != nil {
		return err
	}
	if err := u.Layer(plain); err != nil {
		// a layer that fails to unpack may be a corrupt one: the digest
		// says which, so read the rest of it and report a mismatch first
		if _, derr := io.Copy(io.Discard, cr); errors.Is(derr, ErrDigestMismatch) {
			err = derr
		}
		return fmt.Errorf("layer %d/%d %s: %w", n, of, d, err)
	}
	// read to the end: the digests are checked at EOF
	if _, err := io.Copy(io.Discard, plain); err != nil {
		return fmt.Errorf("layer %d/%d %s (uncompressed: diff_id %s): %w", n, of, d, diffID, err)
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return fmt.Errorf("layer %d/%d %s: %w", n, of, d, err)
	}
	cr.report(cr.n, true)
	return nil
}

// ErrDigestMismatch is wrapped when a layer's bytes do not match its digest.
var ErrDigestMismatch = errors.New("layer digest mismatch")

// verifyReader checks size and sha256 when the stream ends.
func verifyReader(r io.Reader, size int64, d v1.Hash) (io.Reader, error) {
	if d.Algorithm != "sha256" {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "layer %s: unsupported digest algorithm", d)
	}
	return &verifier{r: r, size: size, want: d, h: newSHA()}, nil
}

type countReader struct {
	r      io.Reader
	ctx    context.Context
	n      int64
	last   int64
	report func(int64, bool)
}

func (c *countReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n-c.last >= 1<<20 {
		c.last = c.n
		c.report(c.n, false)
	}
	return n, err
}

// decompress picks gzip, zstd or none by the stream's magic bytes.
func decompress(r io.Reader) (io.Reader, error) {
	br := newPeeker(r)
	magic, _ := br.Peek(4)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		z, err := gzip.NewReader(br)
		if err != nil {
			return nil, err
		}
		z.Multistream(true)
		return z, nil
	case len(magic) == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd:
		z, err := zstd.NewReader(br)
		if err != nil {
			return nil, err
		}
		return z.IOReadCloser(), nil
	}
	return br, nil
}

// Layers is how many layers the image has (0 if unknown).
func (im *Image) Layers() int {
	if im.img == nil {
		return im.layers
	}
	ls, err := im.img.Layers()
	if err != nil {
		return 0
	}
	return len(ls)
}
