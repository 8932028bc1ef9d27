// Package ocitest builds OCI images from local files and serves them from
// go-containerregistry's in-process registry on 127.0.0.1, for tests that
// must not need the internet.
package ocitest

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"

	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Entry is one tar member of a layer.
type Entry struct {
	Name     string
	Type     byte // tar.TypeReg when 0
	Mode     int64
	UID, GID int
	Body     string
	Link     string // symlink or hard link target
	Size     int64  // declared size when Body is shorter (hostile layers)
}

// Tar writes entries as an uncompressed tar stream. A member whose Size is
// larger than its Body is written with the declared size and the stream is
// cut there (as a hostile layer would be).
func Tar(entries []Entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Uid: e.UID, Gid: e.GID, Linkname: e.Link, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
			if e.Size > h.Size {
				h.Size = e.Size
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			panic(err)
		}
		if e.Body != "" {
			if _, err := tw.Write([]byte(e.Body)); err != nil {
				panic(err)
			}
		}
		if e.Size > int64(len(e.Body)) {
			tw.Flush()
			return buf.Bytes() // cut: the rest is never sent
		}
	}
	if err := tw.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// Layer is a gzip-compressed layer of the given tar stream.
func Layer(tarBytes []byte) v1.Layer {
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarBytes)), nil
	}, tarball.WithMediaType(types.DockerLayer))
	if err != nil {
		panic(err)
	}
	return l
}

// Image is layers on an empty base with cfg as its configuration.
func Image(t testing.TB, cfg v1.Config, platform string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config = cfg
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		t.Fatal(err)
	}
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// BusyboxEntries is a root tree made of the host's static busybox plus one
// symlink per applet (as the minimal template), /etc/passwd with a user
// "app" (uid 1000, gid 1000, home /home/app) and the directories a guest needs.
func BusyboxEntries(t testing.TB, busybox string) []Entry {
	t.Helper()
	bin, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatalf("read %s: %v (scripts/test.sh installs busybox-static)", busybox, err)
	}
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		t.Fatalf("%s --list-full: %v", busybox, err)
	}
	es := []Entry{}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "home", "tmp", "var", "dev", "proc", "sys", "run"} {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if d == "root" {
			mode = 0o700
		}
		es = append(es, Entry{Name: d + "/", Type: tar.TypeDir, Mode: mode})
	}
	es = append(es,
		Entry{Name: "bin/busybox", Mode: 0o755, Body: string(bin)},
		Entry{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"},
		Entry{Name: "etc/group", Body: "root:x:0:\napp:x:1000:\n"},
		Entry{Name: "home/app/", Type: tar.TypeDir, Mode: 0o755, UID: 1000, GID: 1000},
	)
	var apps []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.Trim(strings.TrimSpace(l), "/")
		if l != "" && l != "bin/busybox" {
			apps = append(apps, l)
		}
	}
	sort.Strings(apps)
	for _, a := range apps {
		es = append(es, Entry{Name: a, Type: tar.TypeSymlink, Link: "/bin/busybox"})
	}
	return es
}

// Registry is an in-process registry on 127.0.0.1.
type Registry struct {
	Host      string // "127.0.0.1:PORT"
	srv       *httptest.Server
	blob      *blobs
	manifests atomic.Int64
}

// ManifestReads is how many GET or HEAD requests for a manifest (by tag or
// digest) the registry has answered: what resolving a reference costs.
func (r *Registry) ManifestReads() int64 { return r.manifests.Load() }

// NewRegistry starts a registry; with user set it requires HTTP basic
// authentication with user and password.
func NewRegistry(t testing.TB, user, password string) *Registry {
	t.Helper()
	b := &blobs{BlobHandler: registry.NewInMemoryBlobHandler(), corrupt: map[string]bool{}}
	h := registry.New(registry.WithBlobHandler(b), registry.Logger(nopLogger()))
	if user != "" {
		inner := h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != password {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
			inner.ServeHTTP(w, r)
		})
	}
	reg := &Registry{blob: b}
	counted := h
	h = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if (req.Method == http.MethodGet || req.Method == http.MethodHead) && strings.Contains(req.URL.Path, "/manifests/") {
			reg.manifests.Add(1)
		}
		counted.ServeHTTP(w, req)
	})
	reg.srv = httptest.NewServer(h)
	t.Cleanup(reg.srv.Close)
	reg.Host = strings.TrimPrefix(reg.srv.URL, "http://")
	return reg
}

// Push pushes img as repo:tag and returns the reference with its digest.
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image, auth authn.Authenticator) string {
	t.Helper()
	ref, err := name.ParseReference(r.Host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if auth == nil {
		auth = authn.Anonymous
	}
	if err := remote.Write(ref, img, remote.WithAuth(auth)); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return ref.Context().Name() + "@" + d.String()
}

// PushIndex pushes a multi-platform index of imgs as repo:tag.
func (r *Registry) PushIndex(t testing.TB, repoTag string, imgs ...v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(r.Host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	var adds []mutate.IndexAddendum
	for _, img := range imgs {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: cf.Platform()}})
	}
	idx := mutate.AppendManifests(empty.Index, adds...)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
}

// Corrupt makes the registry serve blob d with one byte flipped.
func (r *Registry) Corrupt(d v1.Hash) {
	r.blob.mu.Lock()
	defer r.blob.mu.Unlock()
	r.blob.corrupt[d.String()] = true
}

// DockerConfig writes a Docker config.json with credentials for host in a
// new directory and returns the directory (for DOCKER_CONFIG).
func DockerConfig(t testing.TB, host, user, password string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := map[string]any{"auths": map[string]any{host: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password)),
	}}}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

type blobs struct {
	registry.BlobHandler
	mu      sync.Mutex
	corrupt map[string]bool
}

func (b *blobs) Get(ctx context.Context, repo string, h v1.Hash) (io.ReadCloser, error) {
	rc, err := b.BlobHandler.Get(ctx, repo, h)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	bad := b.corrupt[h.String()]
	b.mu.Unlock()
	if !bad {
		return rc, nil
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, err
	}
	data = append([]byte(nil), data...)
	data[len(data)/2] ^= 0xff
	return io.NopCloser(bytes.NewReader(data)), nil
}

func (b *blobs) Stat(ctx context.Context, repo string, h v1.Hash) (int64, error) {
	return b.BlobHandler.(registry.BlobStatHandler).Stat(ctx, repo, h)
}

func (b *blobs) Put(ctx context.Context, repo string, h v1.Hash, rc io.ReadCloser) error {
	return b.BlobHandler.(registry.BlobPutHandler).Put(ctx, repo, h, rc)
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// PushWithKeychain pushes img as repo:tag with credentials from the
// Docker config (authn.DefaultKeychain).
func (r *Registry) PushWithKeychain(t testing.TB, repoTag string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(r.Host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		t.Fatal(err)
	}
}
