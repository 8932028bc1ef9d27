package cli

import (
	"archive/tar"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/mvm-sandbox/mvm/internal/image/oci/ocitest"
	"github.com/mvm-sandbox/mvm/internal/image/rootfs"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// TestMCPImageResolverRegistries: an OCI reference that is not pulled is
// refused through MCP unless the operator allows registries.
func TestMCPImageResolverRegistries(t *testing.T) {
	base := t.TempDir()
	d := paths.Dirs{Cache: filepath.Join(base, "cache"), Data: filepath.Join(base, "data"), State: filepath.Join(base, "state")}
	resolve := mcpImageResolver(d)
	t.Setenv(EnvMCPAllowRegistries, "")
	for _, ref := range []string{"python:3.12-slim", "ghcr.io/org/app@sha256:" + strings.Repeat("ab", 32)} {
		if _, err := resolve(ref); err == nil || !strings.Contains(err.Error(), EnvMCPAllowRegistries) {
			t.Fatalf("%s without registries: %v", ref, err)
		}
	}
	t.Setenv(EnvMCPAllowRegistries, "1")
	if _, err := resolve("python:3.12-slim"); err != nil {
		t.Fatalf("with registries allowed: %v", err)
	}
}

// TestImagePullImportCLI: image pull/import/ls/rm through the command line
// against a registry in this process: NDJSON events, the artifact with its
// manifest digest, and each failure's exit code.
func TestImagePullImportCLI(t *testing.T) {
	testenv.NeedTools(t, "mkfs.ext4")
	testenv.NeedStaticBinary(t, rootfs.HostBusybox, "busybox-static")
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	reg := ocitest.NewRegistry(t, "", "")
	img := ocitest.Image(t, v1.Config{Cmd: []string{"/bin/sh"}}, "linux/amd64",
		ocitest.Layer(ocitest.Tar(ocitest.BusyboxEntries(t, rootfs.HostBusybox))))
	pinned := reg.Push(t, "cli/app:1", img, nil)
	digest := pinned[strings.Index(pinned, "@")+1:]
	ref := reg.Host + "/cli/app:1"
	app, out, errb := testApp(t)

	if code := run(app, []string{"image", "pull", "--json", ref}); code != 0 {
		t.Fatalf("pull: exit %d: %s", code, errb)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var last struct {
		Artifact struct {
			OCI struct{ Digest string } `json:"oci"`
		} `json:"artifact"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Artifact.OCI.Digest != digest {
		t.Fatalf("last line %q: %v", lines[len(lines)-1], err)
	}
	if !strings.Contains(out.String(), `"status":"layer"`) {
		t.Errorf("no layer events:\n%s", out)
	}
	out.Reset()
	if code := run(app, []string{"image", "ls"}); code != 0 || !strings.Contains(out.String(), "oci:"+ref+"@"+digest) {
		t.Fatalf("image ls: exit %d:\n%s", code, out)
	}
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"image", "pull", "--require-digest", ref}, 126},
		{[]string{"image", "pull", reg.Host + "/cli/nosuch:1"}, 4},
		{[]string{"image", "pull", "Not A Reference"}, 2},
		{[]string{"image", "import", filepath.Join(t.TempDir(), "missing.tar")}, 4},
	} {
		if code := run(app, c.args); code != c.code {
			t.Errorf("%v: exit %d, want %d; stderr %s", c.args, code, c.code, errb)
		}
	}
	// a hostile layer: refused as unsafe (exit 9)
	outside := t.TempDir()
	evil := ocitest.Image(t, v1.Config{}, "linux/amd64", ocitest.Layer(ocitest.Tar([]ocitest.Entry{
		{Name: "etc", Type: tar.TypeSymlink, Link: outside},
		{Name: "etc/evil", Body: "x"},
	})))
	reg.Push(t, "cli/evil:1", evil, nil)
	if code := run(app, []string{"image", "pull", reg.Host + "/cli/evil:1"}); code != 9 {
		t.Errorf("hostile layer: exit %d, want 9; stderr %s", code, errb)
	}
	// import of a docker save archive
	save := filepath.Join(t.TempDir(), "save.tar")
	tag, _ := name.NewTag("example.com/app:1")
	if err := tarball.WriteToFile(save, tag, img); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := run(app, []string{"image", "import", save}); code != 0 || !strings.Contains(out.String(), "manifest "+digest) {
		t.Fatalf("import: exit %d: %s %s", code, out, errb)
	}
	if code := run(app, []string{"image", "rm", ref}); code != 0 {
		t.Fatalf("image rm %s: exit %d: %s", ref, code, errb)
	}
}

// TestImagePullReportsMovedPin: `image pull REF` moves REF's pin like
// `build --refresh` and says so the same way: nothing on a first pull or an
// unmoved tag, `mvmctl: REF moved: OLD → NEW (pinned now)` on stderr, and
// "repinned" in the artifact of --json's last line.
func TestImagePullReportsMovedPin(t *testing.T) {
	testenv.NeedTools(t, "mkfs.ext4")
	testenv.NeedStaticBinary(t, rootfs.HostBusybox, "busybox-static")
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	reg := ocitest.NewRegistry(t, "", "")
	layer := ocitest.Layer(ocitest.Tar(ocitest.BusyboxEntries(t, rootfs.HostBusybox)))
	imgs := make([]v1.Image, 3)
	for i := range imgs {
		imgs[i] = ocitest.Image(t, v1.Config{Cmd: []string{"/bin/sh", "-c", strings.Repeat("x", i+1)}}, "linux/amd64", layer)
	}
	ref := reg.Host + "/cli/moving:1"
	push := func(img v1.Image) string {
		pinned := reg.Push(t, "cli/moving:1", img, nil)
		return pinned[strings.Index(pinned, "@")+1:]
	}
	app, out, errb := testApp(t)
	pull := func(what string, args ...string) {
		t.Helper()
		out.Reset()
		errb.Reset()
		if code := run(app, append([]string{"image", "pull"}, args...)); code != 0 {
			t.Fatalf("%s: exit %d: %s", what, code, errb)
		}
	}
	type repin struct{ Ref, From, To string }
	lastRepinned := func(what string) *repin {
		t.Helper()
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		var last struct {
			Artifact struct {
				Repinned *repin `json:"repinned"`
			} `json:"artifact"`
		}
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
			t.Fatalf("%s: last line %q: %v", what, lines[len(lines)-1], err)
		}
		return last.Artifact.Repinned
	}

	d0 := push(imgs[0])
	pull("first pull", ref)
	if strings.Contains(errb.String(), "moved") {
		t.Errorf("a first pull reports a move:\n%s", errb)
	}
	pull("first pull again, --json", "--json", ref)
	if r := lastRepinned("unmoved tag"); r != nil {
		t.Errorf("a pull of an unmoved tag reports a move: %+v", r)
	}

	d1 := push(imgs[1]) // the tag moves
	pull("pull after the tag moved, --json", "--json", ref)
	if r, want := lastRepinned("moved tag"), (repin{ref, d0, d1}); r == nil || *r != want {
		t.Errorf("pull after the tag moved: repinned %+v, want %+v", r, want)
	}

	d2 := push(imgs[2]) // and again
	pull("pull after the tag moved again", ref)
	if want := "mvmctl: " + ref + " moved: " + d1 + " → " + d2 + " (pinned now)\n"; !strings.Contains(errb.String(), want) {
		t.Errorf("pull after the tag moved again: stderr lacks %q:\n%s", want, errb)
	}
	pull("pull of the unmoved tag", ref)
	if strings.Contains(errb.String(), "moved") {
		t.Errorf("a pull of an unmoved tag reports a move:\n%s", errb)
	}
}
