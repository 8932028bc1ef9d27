package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/volume"
)

// A build directory's [[mount]] tables are a request: refused without the
// operator's consent (naming every mount), covered when -v gives the same
// mount, granted and announced with --allow-manifest-mounts, recorded in
// the plan with their origin; the host-path rules of -v apply to them.
func TestManifestMountsNeedConsent(t *testing.T) {
	r := testRuntime(t)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "data"), 0o755)
	os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte(`template = "minimal"
[[mount]]
host = "data"
guest = "/data"
[[mount]]
volume = "cache"
guest = "/cache"
`), 0o644)
	data := filepath.Join(dir, "data")
	if _, err := volume.Open(r.Dirs.Data).Create("cache", 16<<20, time.Now()); err != nil {
		t.Fatal(err)
	}
	var notices []string
	notice := func(s string) { notices = append(notices, s) }

	// No consent: refused, naming both mounts; options unchanged.
	o := UpOptions{Image: dir, Notice: notice}
	err := r.manifestMounts(&o)
	var me *ManifestMountsError
	if !errors.As(err, &me) || !errors.Is(err, ErrPolicy) || len(me.Missing) != 2 || me.Missing[0] != data+":/data:ro" || me.Missing[1] != "cache:/cache:rw" {
		t.Fatalf("without consent: %v", err)
	}
	if len(o.Mounts) != 0 {
		t.Fatalf("refusal changed the options: %+v", o.Mounts)
	}
	// The operator gives the same mounts: no consent needed, still shown.
	o = UpOptions{Image: dir, Notice: notice, Mounts: []volume.MountSpec{
		{Source: data, Target: "/data", ReadOnly: true}, {Source: "cache", Target: "/cache", Volume: true}}}
	if err := r.manifestMounts(&o); err != nil || len(o.Mounts) != 2 || len(notices) != 1 || !strings.Contains(notices[0], "gives all of it already") {
		t.Fatalf("covered by -v: %v %+v %q", err, o.Mounts, notices)
	}
	// A different mode is not the same mount.
	o = UpOptions{Image: dir, Mounts: []volume.MountSpec{{Source: data, Target: "/data"}}}
	if err := r.manifestMounts(&o); !errors.As(err, &me) || len(me.Missing) != 2 {
		t.Fatalf("rw -v covered a ro request: %v", err)
	}
	// Consent: added with their origin, and announced.
	notices = nil
	o = UpOptions{Image: dir, Notice: notice, AllowManifestMounts: true}
	if err := r.manifestMounts(&o); err != nil || len(o.Mounts) != 2 || o.Mounts[0].Origin != volume.OriginManifest {
		t.Fatalf("with consent: %v %+v", err, o.Mounts)
	}
	if len(notices) != 1 || !strings.Contains(notices[0], "host directory "+data+" -> /data (ro)") || !strings.Contains(notices[0], "volume cache -> /cache (rw)") {
		t.Fatalf("notice: %q", notices)
	}
	// Never read for a name that must not be a directory (MCP).
	o = UpOptions{Image: dir, NoBuildDir: true}
	if err := r.manifestMounts(&o); err != nil || len(o.Mounts) != 0 {
		t.Fatalf("NoBuildDir: %v %+v", err, o.Mounts)
	}

	// The plan records the volume's origin and the consent; the dry run
	// answers like admission.
	os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("template = \"minimal\"\n[[mount]]\nvolume = \"cache\"\nguest = \"/cache\"\n"), 0o644)
	if _, err := r.WouldAdmit(UpOptions{Image: dir}); !errors.As(err, &me) {
		t.Fatalf("dry run without consent: %v", err)
	}
	p, err := r.WouldAdmit(UpOptions{Image: dir, AllowManifestMounts: true})
	if err != nil || !p.AllowManifestMounts || len(p.Volumes) != 1 || p.Volumes[0].Origin != plan.OriginManifest {
		t.Fatalf("dry run with consent: %v %+v", err, p)
	}
	// Consent that was not used is not recorded.
	if p, err := r.WouldAdmit(UpOptions{AllowManifestMounts: true}); err != nil || p.AllowManifestMounts {
		t.Fatalf("unused consent recorded: %v %+v", err, p)
	}

	// The host-path rules of -v apply, and the refusal says where the
	// mount came from.
	for body, want := range map[string]string{
		"host = \"missing\"":             "does not exist",
		"host = \"/\"":                   "sharing /",
		"host = \"" + r.Dirs.Data + "\"": "overlaps mvm's own directory",
		"host = \"link\"":                "is a symlink",
		"host = \"a,source=b\"":          "option syntax",
	} {
		os.Symlink(data, filepath.Join(dir, "link"))
		os.MkdirAll(filepath.Join(dir, "a,source=b"), 0o755)
		os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("template = \"minimal\"\n[[mount]]\n"+body+"\nguest = \"/m\"\n"), 0o644)
		o := UpOptions{Image: dir, AllowManifestMounts: true}
		if err := r.manifestMounts(&o); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		_, err := r.ResolveAttachments(o)
		if !errors.Is(err, ErrAttach) || !strings.Contains(err.Error(), "manifest (mvm.toml) [[mount]]") || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", body, err, want)
		}
	}
}
