package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	ocilayout "github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/image/oci"
	"github.com/mvm-sandbox/mvm/internal/image/oci/ocitest"
	"github.com/mvm-sandbox/mvm/internal/image/rootfs"
	"github.com/mvm-sandbox/mvm/internal/paths"
)

type ociE = ocitest.Entry

// testOCIImage is a busybox image of two layers (the second with a
// whiteout and an opaque directory), a non-root USER, an Entrypoint, Cmd,
// Env, WorkingDir and ExposedPorts.
func testOCIImage(t *testing.T, platform, marker string) v1.Image {
	base := append(ocitest.BusyboxEntries(t, rootfs.HostBusybox),
		ociE{Name: "etc/removed", Body: "gone"},
		ociE{Name: "srv/", Type: tar.TypeDir},
		ociE{Name: "srv/old", Body: "old"},
	)
	top := []ociE{
		{Name: "etc/.wh.removed"},
		{Name: "srv/", Type: tar.TypeDir},
		{Name: "srv/.wh..wh..opq"},
		{Name: "srv/new", Body: "new"},
		{Name: "app/", Type: tar.TypeDir, UID: 1000, GID: 1000},
		{Name: "app/marker", Body: marker, UID: 1000, GID: 1000},
	}
	cfg := v1.Config{
		Entrypoint:   []string{"/bin/sh", "-c"},
		Cmd:          []string{`echo "user=$(id -u):$(id -g) pwd=$(pwd) greeting=$GREETING home=$HOME"`},
		Env:          []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello from oci"},
		WorkingDir:   "/app",
		User:         "app",
		ExposedPorts: map[string]struct{}{"8080/tcp": {}},
	}
	return ocitest.Image(t, cfg, platform, ocitest.Layer(ocitest.Tar(base)), ocitest.Layer(ocitest.Tar(top)))
}

func ociDigest(t *testing.T, img v1.Image) string {
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func guestCat(t *testing.T, img, p string) string {
	return debugfs(t, img, "cat "+p)
}

func artifactCount(t *testing.T, d paths.Dirs) int {
	arts, err := ListArtifacts(d)
	if err != nil {
		t.Fatal(err)
	}
	return len(arts)
}

func TestPullFromRegistry(t *testing.T) {
	rfNeedTools(t)
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	reg := ocitest.NewRegistry(t, "", "")
	amd := testOCIImage(t, "linux/amd64", "amd64")
	arm := testOCIImage(t, "linux/arm64", "arm64")
	reg.PushIndex(t, "app:1", amd, arm)
	d := rfTestDirs(t)
	ctx := context.Background()
	ref := reg.Host + "/app:1"

	var layerEvents int
	a, err := Pull(ctx, d, ref, PullOptions{}, nil, func(e PullEvent) { layerEvents++ })
	if err != nil {
		t.Fatal(err)
	}
	if a.OCI == nil || a.OCI.Digest != ociDigest(t, amd) || a.OCI.Platform != "linux/amd64" || a.OCI.Layers != 2 {
		t.Fatalf("oci info %+v, want the linux/amd64 manifest %s", a.OCI, ociDigest(t, amd))
	}
	if layerEvents < 2 {
		t.Errorf("%d layer progress events", layerEvents)
	}
	if a.Workdir != "/app" || a.Env["GREETING"] != "hello from oci" || strings.Join(a.Command, " ") != `/bin/sh -c `+`echo "user=$(id -u):$(id -g) pwd=$(pwd) greeting=$GREETING home=$HOME"` {
		t.Errorf("artifact config: workdir %q env %v command %q", a.Workdir, a.Env, a.Command)
	}
	if strings.Join(a.Entrypoint, " ") != "/bin/sh -c" {
		t.Errorf("artifact entrypoint %q, want the image's", a.Entrypoint)
	}
	if u := a.OCI.User; u == nil || u.UID != 1000 || u.GID != 1000 || u.Home != "/home/app" {
		t.Errorf("user %+v, want 1000:1000 /home/app", a.OCI.User)
	}
	if strings.Join(a.OCI.Config.ExposedPorts, ",") != "8080/tcp" {
		t.Errorf("exposed ports %v", a.OCI.Config.ExposedPorts)
	}
	fsck(t, a.Path)
	if got := guestCat(t, a.Path, "/app/marker"); got != "amd64" {
		t.Errorf("/app/marker = %q", got)
	}
	for p, want := range map[string]bool{"/etc/removed": false, "/srv/old": false, "/srv/new": true, "/bin/sh": true, "/proc": true} {
		if (guestStat(t, a.Path, p) != "") != want {
			t.Errorf("%s present=%v, want %v", p, !want, want)
		}
	}
	if st := guestStat(t, a.Path, "/app/marker"); !strings.Contains(st, "User:  1000   Group:  1000") {
		t.Errorf("/app/marker ownership not kept:\n%s", st)
	}
	var cfg struct {
		User *ImageUser `json:"user"`
		RootfsConfig
	}
	if err := json.Unmarshal([]byte(guestCat(t, a.Path, RootfsConfigPath)), &cfg); err != nil || cfg.User == nil || cfg.User.UID != 1000 {
		t.Fatalf("image.json user %+v: %v", cfg.User, err)
	}

	// the reference resolves offline to its last pull
	got, err := ResolveImage(d, ref)
	if err != nil || got.Digest != a.Digest {
		t.Fatalf("ResolveImage(%s) = %v, %v", ref, got, err)
	}
	// the same digest again: a cache hit
	again, err := Pull(ctx, d, ref, PullOptions{}, nil, nil)
	if err != nil || !again.Cached || again.Digest != a.Digest {
		t.Fatalf("second pull: %+v %v", again, err)
	}
	// and made again from scratch: the same bytes
	fresh, err := Pull(ctx, d, ref, PullOptions{Refresh: true}, nil, nil)
	if err != nil || fresh.Cached || fresh.Digest != a.Digest {
		t.Fatalf("refreshed pull gave %v (cached %v), want the same digest %s: %v", fresh.Digest, fresh.Cached, a.Digest, err)
	}
	// the other platform
	armArt, err := Pull(ctx, d, ref, PullOptions{Platform: "linux/arm64"}, nil, nil)
	if err != nil || armArt.OCI.Digest != ociDigest(t, arm) || guestCat(t, armArt.Path, "/app/marker") != "arm64" {
		t.Fatalf("arm64 pull: %+v %v", armArt, err)
	}
	// a platform the index lacks
	if _, err := Pull(ctx, d, ref, PullOptions{Platform: "linux/s390x"}, nil, nil); errdefs.KindOf(err) != errdefs.KindNotFound {
		t.Fatalf("missing platform: %v (kind %q)", err, errdefs.KindOf(err))
	}
	// removal by reference
	if _, err := RemoveArtifact(d, ref, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ResolveImage(d, ref); !errors.As(err, new(*NotPulledError)) {
		t.Fatalf("after rm: %v", err)
	}
}

func TestPullRequireDigest(t *testing.T) {
	rfNeedTools(t)
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	reg := ocitest.NewRegistry(t, "", "")
	pinned := reg.Push(t, "app:1", testOCIImage(t, "linux/amd64", "x"), nil)
	d := rfTestDirs(t)
	_, err := Pull(context.Background(), d, reg.Host+"/app:1", PullOptions{RequireDigest: true}, nil, nil)
	if errdefs.KindOf(err) != errdefs.KindRefused || !strings.Contains(err.Error(), "@sha256:") {
		t.Fatalf("tag with digests required: %v (kind %q)", err, errdefs.KindOf(err))
	}
	a, err := Pull(context.Background(), d, pinned, PullOptions{RequireDigest: true}, nil, nil)
	if err != nil || a.OCI.Digest != pinned[strings.Index(pinned, "@")+1:] {
		t.Fatalf("pinned pull: %v %v", a, err)
	}
}

// cacheEmpty asserts that no artifact, tree or work directory is left.
func cacheEmpty(t *testing.T, d paths.Dirs) {
	t.Helper()
	if n := artifactCount(t, d); n != 0 {
		t.Fatalf("%d artifact(s) cached", n)
	}
	ents, _ := os.ReadDir(filepath.Join(d.Images(), "tmp"))
	if len(ents) != 0 {
		t.Fatalf("work directories left: %v", ents)
	}
	if _, err := os.Stat(filepath.Join(d.Images(), "oci-refs")); err == nil {
		t.Fatal("a reference was indexed")
	}
}

func TestPullCorruptLayerRefused(t *testing.T) {
	rfNeedTools(t)
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	reg := ocitest.NewRegistry(t, "", "")
	img := testOCIImage(t, "linux/amd64", "x")
	reg.Push(t, "app:1", img, nil)
	ls, _ := img.Layers()
	ld, _ := ls[1].Digest()
	reg.Corrupt(ld)
	d := rfTestDirs(t)
	_, err := Pull(context.Background(), d, reg.Host+"/app:1", PullOptions{}, nil, nil)
	if !errors.Is(err, oci.ErrDigestMismatch) || errdefs.KindOf(err) != errdefs.KindInvalidArgument {
		t.Fatalf("corrupt layer: %v", err)
	}
	cacheEmpty(t, d)
}

// TestPullDiffIDMismatchRefused: a layer whose compressed bytes match the
// manifest but whose uncompressed tar stream is not the one the
// configuration names (rootfs.diff_ids) is refused, and so is a
// configuration listing fewer diff_ids than there are layers; nothing is
// cached either way.
func TestPullDiffIDMismatchRefused(t *testing.T) {
	rfNeedTools(t)
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	reg := ocitest.NewRegistry(t, "", "")
	img := testOCIImage(t, "linux/amd64", "x")
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	// diff_ids[1] names another layer's uncompressed stream
	other, err := ocitest.Layer(ocitest.Tar([]ociE{{Name: "other", Body: "not this layer"}})).DiffID()
	if err != nil {
		t.Fatal(err)
	}
	swapped := cf.DeepCopy()
	swapped.RootFS.DiffIDs[1] = other
	short := cf.DeepCopy()
	short.RootFS.DiffIDs = short.RootFS.DiffIDs[:1]
	for tag, bad := range map[string]*v1.ConfigFile{"swapped": swapped, "short": short} {
		crafted, err := mutate.ConfigFile(img, bad)
		if err != nil {
			t.Fatal(err)
		}
		reg.Push(t, "crafted:"+tag, crafted, nil)
		d := rfTestDirs(t)
		_, err = Pull(context.Background(), d, reg.Host+"/crafted:"+tag, PullOptions{}, nil, nil)
		if !errors.Is(err, oci.ErrDigestMismatch) || errdefs.KindOf(err) != errdefs.KindInvalidArgument || !strings.Contains(err.Error(), "diff_id") {
			t.Fatalf("%s diff_ids: %v (kind %q)", tag, err, errdefs.KindOf(err))
		}
		cacheEmpty(t, d)
	}
}

func TestPullHostileLayerRefused(t *testing.T) {
	rfNeedTools(t)
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	outside := t.TempDir()
	reg := ocitest.NewRegistry(t, "", "")
	hostile := ocitest.Image(t, v1.Config{}, "linux/amd64", ocitest.Layer(ocitest.Tar([]ociE{
		{Name: "etc", Type: tar.TypeSymlink, Link: outside},
		{Name: "etc/cron.d/evil", Body: "x"},
	})))
	reg.Push(t, "evil:1", hostile, nil)
	d := rfTestDirs(t)
	_, err := Pull(context.Background(), d, reg.Host+"/evil:1", PullOptions{}, nil, nil)
	if !errors.Is(err, oci.ErrUnsafeLayer) || errdefs.KindOf(err) != errdefs.KindRefused {
		t.Fatalf("hostile layer: %v (kind %q)", err, errdefs.KindOf(err))
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("written outside the root: %v", ents)
	}
	cacheEmpty(t, d)
}

func TestPullWithDockerConfigCredentials(t *testing.T) {
	rfNeedTools(t)
	reg := ocitest.NewRegistry(t, "mvm", "s3cret")
	// push with the credentials, as a user would after docker login
	t.Setenv("DOCKER_CONFIG", ocitest.DockerConfig(t, reg.Host, "mvm", "s3cret"))
	img := testOCIImage(t, "linux/amd64", "auth")
	reg.PushWithKeychain(t, "private:1", img)
	d := rfTestDirs(t)
	a, err := Pull(context.Background(), d, reg.Host+"/private:1", PullOptions{}, nil, nil)
	if err != nil || a.OCI.Digest != ociDigest(t, img) {
		t.Fatalf("pull with credentials: %v", err)
	}
	// without credentials: refused with what to do
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	d2 := rfTestDirs(t)
	_, err = Pull(context.Background(), d2, reg.Host+"/private:1", PullOptions{}, nil, nil)
	if errdefs.KindOf(err) != errdefs.KindPermissionDenied || !strings.Contains(err.Error(), "docker login") {
		t.Fatalf("pull without credentials: %v (kind %q)", err, errdefs.KindOf(err))
	}
	cacheEmpty(t, d2)
}

func TestImportDockerSaveAndOCILayout(t *testing.T) {
	rfNeedTools(t)
	img := testOCIImage(t, "linux/amd64", "imported")
	dir := t.TempDir()
	// docker save
	save := filepath.Join(dir, "save.tar")
	tag, _ := name.NewTag("example.com/app:1")
	if err := tarball.WriteToFile(save, tag, img); err != nil {
		t.Fatal(err)
	}
	// OCI layout, as a directory and as a tarball of it
	lay := filepath.Join(dir, "layout")
	p, err := ocilayout.Write(lay, emptyIndex())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	layTar := filepath.Join(dir, "layout.tar")
	if out, err := exec.Command("tar", "-C", lay, "-cf", layTar, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	d := rfTestDirs(t)
	var digests []string
	for _, f := range []string{save, lay, layTar} {
		a, err := Import(context.Background(), d, f, nil, nil)
		if err != nil {
			t.Fatalf("import %s: %v", f, err)
		}
		if a.OCI.Digest != ociDigest(t, img) && !strings.HasSuffix(f, "save.tar") {
			t.Errorf("import %s: manifest digest %s, want %s", f, a.OCI.Digest, ociDigest(t, img))
		}
		if guestCat(t, a.Path, "/app/marker") != "imported" {
			t.Errorf("import %s: marker missing", f)
		}
		digests = append(digests, a.Digest)
	}
	if digests[1] != digests[2] {
		t.Errorf("layout dir and tarball gave %v", digests)
	}
	// not an image
	junk := filepath.Join(dir, "junk.tar")
	os.WriteFile(junk, []byte("not a tar"), 0o644)
	if _, err := Import(context.Background(), d, junk, nil, nil); errdefs.KindOf(err) != errdefs.KindInvalidArgument {
		t.Fatalf("junk import: %v", err)
	}
}

func emptyIndex() v1.ImageIndex { return empty.Index }

func TestBuildManifestOnOCIImage(t *testing.T) {
	rfNeedTools(t)
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	reg := ocitest.NewRegistry(t, "", "")
	img := testOCIImage(t, "linux/amd64", "base")
	reg.Push(t, "app:1", img, nil)
	dir := t.TempDir()
	toml := "image = \"" + reg.Host + "/app:1\"\ncommand = [\"/bin/sh\", \"-c\", \"echo manifest\"]\n[env]\nMODE = \"manifest\"\n"
	if err := os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "task.txt"), []byte("from the build dir"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := rfTestDirs(t)
	a, err := Build(context.Background(), d, dir, "", BuildOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.Template != TemplateOCI || a.OCI == nil || a.OCI.Digest != ociDigest(t, img) {
		t.Fatalf("artifact %+v", a)
	}
	if a.Env["MODE"] != "manifest" || a.Env["GREETING"] != "hello from oci" || strings.Join(a.Command, " ") != "/bin/sh -c echo manifest" || a.Workdir != "/work" {
		t.Errorf("config: env %v command %v workdir %q", a.Env, a.Command, a.Workdir)
	}
	if len(a.Entrypoint) != 0 {
		t.Errorf("a manifest's command replaces the Entrypoint too; artifact keeps %q", a.Entrypoint)
	}
	if guestCat(t, a.Path, "/work/task.txt") != "from the build dir" || guestCat(t, a.Path, "/app/marker") != "base" {
		t.Errorf("files missing")
	}
	if u := a.OCI.User; u == nil || u.UID != 1000 {
		t.Errorf("user %+v", u)
	}
	again, err := Build(context.Background(), d, dir, "", BuildOptions{}, nil)
	if err != nil || !again.Cached || again.Digest != a.Digest {
		t.Fatalf("second build: %v %v", again, err)
	}
}

// TestUnknownTemplateNamesOCIAlternative: python-3.12 (no Debian release
// here provides it) points at the OCI image, which a name with ':' reaches.
func TestUnknownTemplateNamesOCIAlternative(t *testing.T) {
	_, err := ResolveTemplate("python-3.12")
	if err == nil || !strings.Contains(err.Error(), "python:3.12-slim") {
		t.Fatalf("error %v does not name python:3.12-slim", err)
	}
	// a name of no template family gets no made-up reference
	if _, err := ResolveTemplate("foo-bar"); err == nil || strings.Contains(err.Error(), "foo:bar") {
		t.Fatalf("foo-bar: %v", err)
	}
	if !oci.IsReference("python:3.12-slim") || oci.IsReference("python-3.12") || oci.IsReference("sha256:abcd") {
		t.Fatal("reference detection")
	}
	d := rfTestDirs(t)
	if _, err := ResolveImage(d, "python:3.12-slim"); !errors.As(err, new(*NotPulledError)) {
		t.Fatalf("ResolveImage of an unpulled reference: %v", err)
	}
}

// credHelper writes docker-credential-NAME into a new directory on PATH:
// a credential helper as docker's protocol has it (`get` reads the
// server on stdin and prints {ServerURL, Username, Secret}) that answers
// user:secret and logs every server it was asked about.
func credHelper(t *testing.T, name, user, secret string) (log string) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "asked")
	script := "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> " + log + "\n" +
		"printf '{\"ServerURL\":\"%s\",\"Username\":\"" + user + "\",\"Secret\":\"" + secret + "\"}\\n' \"$server\"\n"
	if err := os.WriteFile(filepath.Join(dir, "docker-credential-"+name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return log
}

// TestPullWithCredentialHelpers: credentials from a Docker config's
// credHelpers (per registry) and credsStore (the default store), each a
// helper program on PATH, as docker finds them; a helper answering wrong
// credentials is a permission error with what to do, nothing cached.
func TestPullWithCredentialHelpers(t *testing.T) {
	rfNeedTools(t)
	reg := ocitest.NewRegistry(t, "mvm", "s3cret")
	t.Setenv("DOCKER_CONFIG", ocitest.DockerConfig(t, reg.Host, "mvm", "s3cret"))
	img := testOCIImage(t, "linux/amd64", "helper")
	reg.PushWithKeychain(t, "private:1", img)
	good := credHelper(t, "mvmgood", "mvm", "s3cret")
	credHelper(t, "mvmbad", "mvm", "wrong")
	for _, c := range []struct {
		name, config string
		ok           bool
	}{
		{"credHelpers", `{"credHelpers": {"` + reg.Host + `": "mvmgood"}}`, true},
		{"credsStore", `{"credsStore": "mvmgood"}`, true},
		{"wrong secret", `{"credHelpers": {"` + reg.Host + `": "mvmbad"}}`, false},
	} {
		cfg := t.TempDir()
		if err := os.WriteFile(filepath.Join(cfg, "config.json"), []byte(c.config), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("DOCKER_CONFIG", cfg)
		os.Remove(good)
		d := rfTestDirs(t)
		a, err := Pull(context.Background(), d, reg.Host+"/private:1", PullOptions{}, nil, nil)
		if !c.ok {
			if errdefs.KindOf(err) != errdefs.KindPermissionDenied || !strings.Contains(err.Error(), "docker login") {
				t.Fatalf("%s: %v (kind %q)", c.name, err, errdefs.KindOf(err))
			}
			cacheEmpty(t, d)
			continue
		}
		if err != nil || a.OCI.Digest != ociDigest(t, img) {
			t.Fatalf("%s: pull: %v", c.name, err)
		}
		if asked, _ := os.ReadFile(good); !strings.Contains(string(asked), reg.Host) {
			t.Fatalf("%s: the helper was not asked for %s (asked: %q)", c.name, reg.Host, asked)
		}
	}
}

// TestBuildOnOCITagIsPinned: a manifest on image = TAG resolves the tag on
// the registry once; rebuilding the unchanged input asks the registry
// nothing, even after the tag moved, and keeps the digest it was pinned
// to. Pull.Refresh resolves it again (one manifest request) and moves the
// pin; so does `image pull`. With the cached tree gone, the layers come by
// the pinned digest, not by the tag. A pinned tag is still refused when
// digests are required.
func TestBuildOnOCITagIsPinned(t *testing.T) {
	rfNeedTools(t)
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	reg := ocitest.NewRegistry(t, "", "")
	img1, img2, img3 := testOCIImage(t, "linux/amd64", "one"), testOCIImage(t, "linux/amd64", "two"), testOCIImage(t, "linux/amd64", "three")
	reg.Push(t, "app:1", img1, nil)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("image = \""+reg.Host+"/app:1\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := rfTestDirs(t)
	build := func(what string, o BuildOptions, wantReads int64, want v1.Image) *Artifact {
		t.Helper()
		before := reg.ManifestReads()
		a, err := Build(context.Background(), d, dir, "", o, nil)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := reg.ManifestReads() - before; got != wantReads {
			t.Errorf("%s: %d manifest request(s) to the registry, want %d", what, got, wantReads)
		}
		if a.OCI == nil || a.OCI.Digest != ociDigest(t, want) {
			t.Errorf("%s: built on %+v, want %s", what, a.OCI, ociDigest(t, want))
		}
		return a
	}
	first := build("first build", BuildOptions{}, 1, img1)
	reg.Push(t, "app:1", img2, nil) // the tag moves
	again := build("rebuild", BuildOptions{}, 0, img1)
	if !again.Cached || again.Digest != first.Digest {
		t.Errorf("rebuild of an unchanged input: cached %v digest %s, want %s", again.Cached, again.Digest, first.Digest)
	}
	// a changed file rebuilds the image on the pinned tree: still no request
	os.WriteFile(filepath.Join(dir, "new.txt"), []byte("x"), 0o644)
	build("rebuild with a new file", BuildOptions{}, 0, img1)

	if again.Repinned != nil {
		t.Errorf("a build on the pin reports a moved pin: %+v", again.Repinned)
	}
	moved := build("refresh", BuildOptions{Pull: PullOptions{Refresh: true}}, 1, img2)
	if want := (Repin{Ref: reg.Host + "/app:1", From: ociDigest(t, img1), To: ociDigest(t, img2)}); moved.Repinned == nil || *moved.Repinned != want {
		t.Errorf("refresh after the tag moved: repinned %+v, want %+v", moved.Repinned, want)
	}
	if same := build("refresh of an unmoved tag", BuildOptions{Pull: PullOptions{Refresh: true}}, 1, img2); same.Repinned != nil || !same.Cached {
		t.Errorf("refresh of an unmoved tag: repinned %+v, cached %v; want no move and a cache hit", same.Repinned, same.Cached)
	}
	build("rebuild after the refresh", BuildOptions{}, 0, img2)

	reg.Push(t, "app:1", img3, nil)
	pulled, err := Pull(context.Background(), d, reg.Host+"/app:1", PullOptions{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Repin{Ref: reg.Host + "/app:1", From: ociDigest(t, img2), To: ociDigest(t, img3)}); pulled.Repinned == nil || *pulled.Repinned != want {
		t.Errorf("image pull after the tag moved: repinned %+v, want %+v", pulled.Repinned, want)
	}
	// the pull moved the pin; its tree is not a build tree yet, so the
	// build fetches the pinned digest's manifest once to unpack it
	a3 := build("rebuild after image pull", BuildOptions{}, 1, img3)
	if guestCat(t, a3.Path, "/app/marker") != "three" {
		t.Errorf("built on the wrong tree")
	}

	// the tree is gone: fetched again by the pinned digest (one request for
	// its manifest), although the tag now names another image
	reg.Push(t, "app:1", img1, nil)
	if err := os.RemoveAll(filepath.Join(d.Images(), "trees")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "new.txt"), []byte("y"), 0o644)
	build("rebuild without the cached tree", BuildOptions{}, 1, img3)

	before := reg.ManifestReads()
	_, err = Build(context.Background(), d, dir, "", BuildOptions{Pull: PullOptions{RequireDigest: true}}, nil)
	if errdefs.KindOf(err) != errdefs.KindRefused || !strings.Contains(err.Error(), "@sha256:") || reg.ManifestReads() != before {
		t.Errorf("a pinned tag with digests required: want refused before any request, got %v (%d requests)", err, reg.ManifestReads()-before)
	}
}

// TestRefreshWithoutOCIBase: a pull refresh (up/run --refresh) of a
// manifest on a template names nothing to resolve again: it is a cache hit
// and moves nothing.
func TestRefreshWithoutOCIBase(t *testing.T) {
	rfNeedTools(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("template = \"minimal\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := rfTestDirs(t)
	first, err := Build(context.Background(), d, dir, "", BuildOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Build(context.Background(), d, dir, "", BuildOptions{Pull: PullOptions{Refresh: true}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cached || again.Digest != first.Digest || again.Repinned != nil {
		t.Errorf("pull refresh of a template manifest: cached %v, digest %s (want %s), repinned %+v; want a cache hit that moves nothing", again.Cached, again.Digest, first.Digest, again.Repinned)
	}
}
