package e2e

import (
	"archive/tar"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/image/oci/ocitest"
	"github.com/mvm-sandbox/mvm/internal/image/rootfs"
)

// TestOCIImagePullRunExecFiles pulls a busybox image from a registry in
// this process (127.0.0.1, nothing from the internet), runs its
// Entrypoint/Cmd with the image's Env, WorkingDir and non-root USER on a
// real microVM, then keeps a sandbox of it up for exec and file
// operations.
func TestOCIImagePullRunExecFiles(t *testing.T) {
	e := newEnv(t)
	e.extra = append(e.extra, "DOCKER_CONFIG="+t.TempDir())
	reg := ocitest.NewRegistry(t, "", "")
	// a marker of its own, so that this image is new to the shared cache
	// and the pull really unpacks and packs
	rnd := make([]byte, 8)
	rand.Read(rnd)
	marker := "oci-e2e-" + hex.EncodeToString(rnd)
	base := ocitest.BusyboxEntries(t, rootfs.HostBusybox)
	top := []ocitest.Entry{
		{Name: "app/", Type: tar.TypeDir, Mode: 0o755, UID: 1000, GID: 1000},
		{Name: "app/marker", Body: marker, UID: 1000, GID: 1000},
	}
	img := ocitest.Image(t, v1.Config{
		Entrypoint:   []string{"/bin/sh", "-c"},
		Cmd:          []string{`echo "user=$(id -u):$(id -g) pwd=$(pwd) greeting=$GREETING home=$HOME marker=$(cat marker)"`},
		Env:          []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello from oci"},
		WorkingDir:   "/app",
		User:         "app",
		ExposedPorts: map[string]struct{}{"8080/tcp": {}},
	}, "linux/amd64", ocitest.Layer(ocitest.Tar(base)), ocitest.Layer(ocitest.Tar(top)))
	pinned := reg.Push(t, "e2e/busybox:1", img, nil)
	ref := reg.Host + "/e2e/busybox:1"
	digest := pinned[strings.Index(pinned, "@")+1:]

	// pull with NDJSON events
	r := e.must("image", "pull", "--json", ref)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	var last struct {
		Artifact struct {
			Digest string `json:"digest"`
			OCI    struct {
				Digest string `json:"digest"`
			} `json:"oci"`
		} `json:"artifact"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Artifact.OCI.Digest != digest {
		t.Fatalf("pull --json last line %q: %v (want manifest digest %s)", lines[len(lines)-1], err, digest)
	}
	if !strings.Contains(r.stdout, `"status":"layer"`) {
		t.Errorf("no per-layer events in:\n%s", r.stdout)
	}
	if ls := e.must("image", "ls"); !strings.Contains(ls.stdout, "oci:"+ref) || !strings.Contains(ls.stdout, digest[:19]) {
		t.Errorf("image ls does not show the source and digest:\n%s", ls.stdout)
	}

	// run without argv: the image's Entrypoint and Cmd, as its user; the
	// receipt hashes that command, not an empty argv
	rdir := t.TempDir()
	r = e.must("run", "--receipt", filepath.Join(rdir, "cmd.json"), "--image", ref)
	want := "user=1000:1000 pwd=/app greeting=hello from oci home=/home/app marker=" + marker + "\n"
	if r.stdout != want {
		t.Fatalf("run --image %s: stdout %q, want %q", ref, r.stdout, want)
	}
	cfg, _ := img.ConfigFile()
	receiptArgv(t, filepath.Join(rdir, "cmd.json"), append(append([]string{}, cfg.Config.Entrypoint...), cfg.Config.Cmd...))
	// --entrypoint replaces the Entrypoint and drops the Cmd
	if r := e.must("run", "--image", ref, "--entrypoint", "echo", "--", "hi", "there"); r.stdout != "hi there\n" {
		t.Fatalf("run --entrypoint echo: %q", r.stdout)
	}
	// tags refused when digests are required; the pinned reference runs
	if r := e.run("run", "--require-digest", "--image", ref, "--", "true"); r.code == 0 || !strings.Contains(r.stderr, "@sha256:") {
		t.Fatalf("run --require-digest with a tag: %s", r)
	}
	// ARGV replaces the Cmd and keeps the Entrypoint (sh -c), as docker
	// run does; the manifest digest and that command are in the receipt
	receipt := filepath.Join(rdir, "r.json")
	if r := e.must("run", "--require-digest", "--receipt", receipt, "--image", pinned, "--", "echo replaced; id -u"); r.stdout != "replaced\n1000\n" {
		t.Fatalf("run -- ARGV with the image's Entrypoint: %q", r.stdout)
	}
	if b, err := os.ReadFile(receipt); err != nil || !strings.Contains(string(b), `"oci_digest":"`+digest+`"`) {
		t.Fatalf("receipt does not record the manifest digest %s: %s %v", digest, b, err)
	}
	receiptArgv(t, receipt, []string{"/bin/sh", "-c", "echo replaced; id -u"})
	e.must("receipt", "verify", receipt)

	// a sandbox of it: exec and file operations
	e.must("up", "--name", "ocibox", "--image", ref)
	defer e.run("down", "ocibox")
	// and in the admitted plan
	var planned bool
	for _, d := range e.sandboxDirs() {
		if b, err := os.ReadFile(filepath.Join(e.state, "sb", d, "plan.json")); err == nil && strings.Contains(string(b), `"oci_digest":"`+digest+`"`) {
			planned = true
		}
	}
	if !planned {
		t.Errorf("no sandbox plan records oci_digest %s", digest)
	}
	r = e.must("exec", "ocibox", "--", "sh", "-c", "id -u; pwd; echo written > /app/out; cat /app/out")
	if r.stdout != "1000\n/app\nwritten\n" {
		t.Fatalf("exec: %q", r.stdout)
	}
	host := filepath.Join(t.TempDir(), "in.txt")
	if err := os.WriteFile(host, []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.must("cp", host, "ocibox:/tmp/in.txt")
	if r := e.must("exec", "ocibox", "--", "cat", "/tmp/in.txt"); r.stdout != "from the host\n" {
		t.Fatalf("cp in then cat: %q", r.stdout)
	}
	back := filepath.Join(t.TempDir(), "marker")
	e.must("cp", "ocibox:/app/marker", back)
	if b, err := os.ReadFile(back); err != nil || string(b) != marker {
		t.Fatalf("cp out: %q %v", b, err)
	}
	if r := e.must("inspect", "ocibox"); !strings.Contains(r.stdout, "8080/tcp") || !strings.Contains(r.stdout, digest) {
		t.Errorf("inspect does not list the exposed port and the manifest digest:\n%s", r.stdout)
	}
	e.must("down", "ocibox")
	e.assertClean()
}

// receiptArgv checks that a receipt hashes argv.
func receiptArgv(t *testing.T, file string, argv []string) {
	t.Helper()
	var rc struct {
		Payload struct {
			ArgvSHA256 string `json:"argv_sha256"`
			ArgvLen    int    `json:"argv_len"`
		} `json:"payload"`
	}
	b, err := os.ReadFile(file)
	if err == nil {
		err = json.Unmarshal(b, &rc)
	}
	if err != nil || rc.Payload.ArgvSHA256 != evidence.ArgvSHA256(argv) || rc.Payload.ArgvLen != len(argv) {
		t.Fatalf("receipt %s: argv_sha256 %s len %d, want those of %q: %v", file, rc.Payload.ArgvSHA256, rc.Payload.ArgvLen, argv, err)
	}
}

// TestOCIImageDeclaration: a declaration on mvm.oci_image(REF) (a tag on
// the registry in this process) compiles to image kind oci_image; under
// the restrictive profile, even approved, the tag is refused before
// anything is created; otherwise `up` pulls it, boots the workload with
// its source, and the signed receipt of an exec carries the manifest
// digest the tag resolved to and the IR hash.
func TestOCIImageDeclaration(t *testing.T) {
	e := newEnv(t)
	e.extra = append(e.extra, "DOCKER_CONFIG="+t.TempDir())
	reg := ocitest.NewRegistry(t, "", "")
	rnd := make([]byte, 8)
	rand.Read(rnd)
	img := ocitest.Image(t, v1.Config{Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, Cmd: []string{"/bin/sh"}},
		"linux/amd64", ocitest.Layer(ocitest.Tar(append(ocitest.BusyboxEntries(t, rootfs.HostBusybox),
			ocitest.Entry{Name: "etc/marker", Body: hex.EncodeToString(rnd)}))))
	// a repository of its own: builds pin a tag's digest in the shared
	// cache, and another run's registry may have had this port
	repo := "e2e/decl-" + hex.EncodeToString(rnd)
	pinned := reg.Push(t, repo+":1", img, nil)
	digest := pinned[strings.Index(pinned, "@")+1:]
	ref := reg.Host + "/" + repo + ":1"

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("from the source\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	app := filepath.Join(dir, "app.py")
	src := `import mvm

@mvm.app(
    name="ocidecl",
    source=mvm.local_path("."),
    image=mvm.oci_image("` + ref + `"),
    entrypoint=mvm.entrypoint(command=["sh", "-c", "echo started > /tmp/started; exec sleep 3600"]),
)
def run():
    pass
`
	if err := os.WriteFile(app, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var compiled struct {
		IR struct {
			Image map[string]string `json:"image"`
		} `json:"ir"`
	}
	if r := e.must("compile", app, "--json"); json.Unmarshal([]byte(r.stdout), &compiled) != nil || compiled.IR.Image["kind"] != "oci_image" || compiled.IR.Image["ref"] != ref {
		t.Fatalf("compile: %s", r.stdout)
	}

	// restrictive: approved, but a tag is not a pin
	e.must("approve", app)
	if r := e.run("up", "--profile", "restrictive", app); r.code != 126 || !strings.Contains(r.stderr, "@sha256:") || len(e.sandboxDirs()) != 0 {
		t.Fatalf("restrictive up of a tag: %s (sandboxes %v)", r, e.sandboxDirs())
	}

	// so is a manifest's image = TAG
	mdir := t.TempDir()
	if err := os.WriteFile(filepath.Join(mdir, "mvm.toml"), []byte("image = \""+ref+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := e.run("up", "--profile", "restrictive", mdir); r.code != 126 || !strings.Contains(r.stderr, "@sha256:") || len(e.sandboxDirs()) != 0 {
		t.Fatalf("restrictive up of a manifest on a tag: %s (sandboxes %v)", r, e.sandboxDirs())
	}

	e.must("up", app)
	defer e.run("down", "ocidecl")
	receipt := filepath.Join(t.TempDir(), "r.json")
	r := e.must("exec", "--receipt", receipt, "ocidecl", "--", "sh", "-c", "for i in $(seq 100); do [ -f /tmp/started ] && break; sleep 0.1; done; cat /app/hello.txt /etc/marker /tmp/started")
	if r.stdout != "from the source\n"+hex.EncodeToString(rnd)+"started\n" {
		t.Fatalf("exec in the declared workload: %q", r.stdout)
	}
	b, err := os.ReadFile(receipt)
	if err != nil || !strings.Contains(string(b), `"oci_digest":"`+digest+`"`) || !strings.Contains(string(b), `"workload_ir_sha256":"`) {
		t.Fatalf("receipt lacks the manifest digest %s or the IR hash: %s %v", digest, b, err)
	}
	e.must("receipt", "verify", receipt)
	e.must("down", "ocidecl")
	e.assertClean()
}

// TestOCIDeclarationPinned: `mvmctl build app.py` on mvm.oci_image(TAG)
// resolves the tag on the registry once; building the unchanged
// declaration again makes no manifest request, even after the tag moved,
// and keeps the digest; `build --refresh` resolves it again (one request)
// and builds on what the tag names now. No VM boots.
func TestOCIDeclarationPinned(t *testing.T) {
	e := newEnv(t)
	e.extra = append(e.extra, "DOCKER_CONFIG="+t.TempDir())
	reg := ocitest.NewRegistry(t, "", "")
	rnd := make([]byte, 8)
	rand.Read(rnd)
	image := func(marker string) v1.Image { return markerImage(t, marker) }
	repo := "e2e/pin-" + hex.EncodeToString(rnd)
	first := reg.Push(t, repo+":1", image("first-"+hex.EncodeToString(rnd)), nil)
	ref := reg.Host + "/" + repo + ":1"
	dir := t.TempDir()
	app := filepath.Join(dir, "app.py")
	src := "import mvm\n\n@mvm.app(name=\"ocipin\", source=mvm.local_path(\".\"), image=mvm.oci_image(\"" + ref + "\"))\ndef run():\n    pass\n"
	if err := os.WriteFile(app, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	build := func(what string, wantReads int64, wantDigest string, args ...string) {
		t.Helper()
		before := reg.ManifestReads()
		r := e.must(append([]string{"build", app, "--json"}, args...)...)
		var out struct {
			Artifact struct {
				OCI struct {
					Digest string `json:"digest"`
				} `json:"oci"`
			} `json:"artifact"`
		}
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &out); err != nil || out.Artifact.OCI.Digest != wantDigest {
			t.Fatalf("%s: built on %q, want %s: %v\n%s", what, out.Artifact.OCI.Digest, wantDigest, err, r.stdout)
		}
		if got := reg.ManifestReads() - before; got != wantReads {
			t.Errorf("%s: %d manifest request(s) to the registry, want %d", what, got, wantReads)
		}
	}
	digest := func(pinned string) string { return pinned[strings.Index(pinned, "@")+1:] }
	build("first build", 1, digest(first))
	second := reg.Push(t, repo+":1", image("second-"+hex.EncodeToString(rnd)), nil)
	build("rebuild of the unchanged declaration", 0, digest(first))
	build("build --refresh", 1, digest(second), "--refresh")
	build("rebuild after the refresh", 0, digest(second))
}

// markerImage is a one-layer busybox image whose /etc/marker holds marker.
func markerImage(t *testing.T, marker string) v1.Image {
	return ocitest.Image(t, v1.Config{Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, Cmd: []string{"/bin/sh"}},
		"linux/amd64", ocitest.Layer(ocitest.Tar(append(ocitest.BusyboxEntries(t, rootfs.HostBusybox),
			ocitest.Entry{Name: "etc/marker", Body: marker}))))
}

// TestOCIManifestUpRefresh: a build directory on image = TAG boots from
// its pin: after the tag moved, `up DIR` asks the registry nothing and
// boots the pinned digest; `up DIR --refresh` resolves the tag again (one
// manifest request), boots what it names now and reports the move
// ("repinned" in --json); `run --image DIR --refresh` and `up FILE
// --refresh` (a declaration on the same reference: one pin) do the same
// and print the move on stderr. --refresh on an image that is not built on
// the fly is refused before anything is created.
func TestOCIManifestUpRefresh(t *testing.T) {
	e := newEnv(t)
	// no ready snapshots: every boot here is the first of its image
	e.extra = append(e.extra, "DOCKER_CONFIG="+t.TempDir(), "MVM_WARM=0")
	reg := ocitest.NewRegistry(t, "", "")
	rnd := make([]byte, 8)
	rand.Read(rnd)
	repo := "e2e/uprefresh-" + hex.EncodeToString(rnd)
	ref := reg.Host + "/" + repo + ":1"
	push := func(n string) (marker, digest string) {
		marker = n + "-" + hex.EncodeToString(rnd)
		pinned := reg.Push(t, repo+":1", markerImage(t, marker), nil)
		return marker, pinned[strings.Index(pinned, "@")+1:]
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("image = \""+ref+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	reads := func(what string, want int64, f func()) {
		t.Helper()
		before := reg.ManifestReads()
		f()
		if got := reg.ManifestReads() - before; got != want {
			t.Errorf("%s: %d manifest request(s) to the registry, want %d", what, got, want)
		}
	}

	type upJSON struct {
		OCIDigest string `json:"oci_digest"`
		Repinned  *struct {
			Ref, From, To string
		} `json:"repinned"`
	}
	up := func(args ...string) upJSON {
		t.Helper()
		r := e.must(append([]string{"up", "--json"}, args...)...)
		var st upJSON
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("up --json: %v\n%s", err, r.stdout)
		}
		return st
	}
	marker := func(name string) string { return e.must("exec", name, "--", "cat", "/etc/marker").stdout }

	_, d1 := push("first")
	reads("build (pins the tag)", 1, func() { e.must("build", dir) })
	m2, d2 := push("second") // the tag moves
	reads("up DIR on the pin", 0, func() {
		if st := up(dir, "--name", "uppin"); st.OCIDigest != d1 || st.Repinned != nil {
			t.Errorf("up DIR after the tag moved: booted %s, repinned %+v; want the pinned %s and no move", st.OCIDigest, st.Repinned, d1)
		}
	})
	e.must("down", "uppin")

	reads("up DIR --refresh", 1, func() {
		st := up(dir, "--refresh", "--name", "uprefresh")
		if st.OCIDigest != d2 || st.Repinned == nil || st.Repinned.Ref != ref || st.Repinned.From != d1 || st.Repinned.To != d2 {
			t.Errorf("up DIR --refresh: booted %s, repinned %+v; want %s and %s -> %s", st.OCIDigest, st.Repinned, d2, d1, d2)
		}
	})
	if got := marker("uprefresh"); got != m2 {
		t.Errorf("up DIR --refresh booted marker %q, want %q", got, m2)
	}
	e.must("down", "uprefresh")

	m3, d3 := push("third")
	reads("run --image DIR --refresh", 1, func() {
		r := e.must("run", "--image", dir, "--refresh", "--", "cat", "/etc/marker")
		if r.stdout != m3 || !strings.Contains(r.stderr, ref+" moved: "+d2+" → "+d3) {
			t.Errorf("run --image DIR --refresh: marker %q (want %q), stderr %q (want the move %s → %s)", r.stdout, m3, r.stderr, d2, d3)
		}
	})

	// a declaration on the same reference shares the pin
	ddir := t.TempDir()
	app := filepath.Join(ddir, "app.py")
	src := "import mvm\n\n@mvm.app(name=\"uprefresh-decl\", source=mvm.local_path(\".\"), image=mvm.oci_image(\"" + ref + "\"),\n" +
		"         entrypoint=mvm.entrypoint(command=[\"sleep\", \"3600\"]))\ndef run():\n    pass\n"
	if err := os.WriteFile(app, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	m4, d4 := push("fourth")
	reads("up FILE --refresh", 1, func() {
		r := e.must("up", app, "--refresh")
		if !strings.Contains(r.stderr, ref+" moved: "+d3+" → "+d4) {
			t.Errorf("up FILE --refresh: stderr %q does not show the move %s → %s", r.stderr, d3, d4)
		}
	})
	if got := marker("uprefresh-decl"); got != m4 {
		t.Errorf("up FILE --refresh booted marker %q, want %q", got, m4)
	}
	e.must("down", "uprefresh-decl")

	// not built on the fly: refused before anything is created
	for _, args := range [][]string{{"up", "--image", ref, "--refresh"}, {"run", "--refresh", "--", "true"}} {
		if r := e.run(args...); r.code != 2 || !strings.Contains(r.stderr, "refresh applies to an image built on the fly") || !strings.Contains(r.stderr, "image pull") {
			t.Errorf("mvmctl %s: want exit 2 naming what --refresh applies to and image pull: %s", strings.Join(args, " "), r)
		}
	}
	e.assertClean()
}
