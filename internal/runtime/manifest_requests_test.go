package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/secret"
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
	err := r.manifestAttachments(&o)
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
	if err := r.manifestAttachments(&o); err != nil || len(o.Mounts) != 2 || len(notices) != 1 || !strings.Contains(notices[0], "gives all of it already") {
		t.Fatalf("covered by -v: %v %+v %q", err, o.Mounts, notices)
	}
	// A different mode is not the same mount.
	o = UpOptions{Image: dir, Mounts: []volume.MountSpec{{Source: data, Target: "/data"}}}
	if err := r.manifestAttachments(&o); !errors.As(err, &me) || len(me.Missing) != 2 {
		t.Fatalf("rw -v covered a ro request: %v", err)
	}
	// Consent: added with their origin, and announced.
	notices = nil
	o = UpOptions{Image: dir, Notice: notice, AllowManifestMounts: true}
	if err := r.manifestAttachments(&o); err != nil || len(o.Mounts) != 2 || o.Mounts[0].Origin != volume.OriginManifest {
		t.Fatalf("with consent: %v %+v", err, o.Mounts)
	}
	if len(notices) != 1 || !strings.Contains(notices[0], "host directory "+data+" -> /data (ro)") || !strings.Contains(notices[0], "volume cache -> /cache (rw)") {
		t.Fatalf("notice: %q", notices)
	}
	// Never read for a name that must not be a directory (MCP).
	o = UpOptions{Image: dir, NoBuildDir: true}
	if err := r.manifestAttachments(&o); err != nil || len(o.Mounts) != 0 {
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
		if err := r.manifestAttachments(&o); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		_, err := r.ResolveAttachments(o)
		if !errors.Is(err, ErrAttach) || !strings.Contains(err.Error(), "manifest (mvm.toml) [[mount]]") || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", body, err, want)
		}
	}
}

// A manifest's [secrets] are a request like its mounts: refused without
// --allow-manifest-secrets (names and targets only in the message), covered
// by the same --secret, granted with the flag and recorded in the plan.
func TestManifestSecretsNeedConsent(t *testing.T) {
	r := testRuntime(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("template = \"minimal\"\n[secrets]\nAPI_KEY = \"openai\"\n"), 0o644)
	if err := secret.Open(r.Dirs.Data).Set("openai", []byte("VALUE-42"), time.Now()); err != nil {
		t.Fatal(err)
	}
	var notices []string
	o := UpOptions{Image: dir, Notice: func(s string) { notices = append(notices, s) }}
	err := r.manifestAttachments(&o)
	var se *ManifestSecretsError
	if !errors.As(err, &se) || !errors.Is(err, ErrPolicy) || len(se.Missing) != 1 || se.Missing[0] != "openai:API_KEY" || strings.Contains(err.Error(), "VALUE-42") {
		t.Fatalf("without consent: %v", err)
	}
	o = UpOptions{Image: dir, Secrets: []secret.Ref{{Name: "openai", Env: "API_KEY"}}}
	if err := r.manifestAttachments(&o); err != nil || len(o.Secrets) != 1 {
		t.Fatalf("covered by --secret: %v %+v", err, o.Secrets)
	}
	o = UpOptions{Image: dir, AllowManifestSecrets: true, Notice: func(s string) { notices = append(notices, s) }}
	if err := r.manifestAttachments(&o); err != nil || len(o.Secrets) != 1 || o.Secrets[0].Origin != volume.OriginManifest {
		t.Fatalf("with consent: %v %+v", err, o.Secrets)
	}
	if len(notices) != 1 || !strings.Contains(notices[0], "openai:API_KEY") {
		t.Fatalf("notice: %q", notices)
	}
	p, err := r.WouldAdmit(UpOptions{Image: dir, AllowManifestSecrets: true})
	if err != nil || !p.AllowManifestSecrets || len(p.Secrets) != 1 || p.Secrets[0].Origin != plan.OriginManifest || p.Secrets[0].Target != "env:API_KEY" {
		t.Fatalf("plan: %v %+v", err, p)
	}
	// A name that is not stored: exit 2, naming the manifest.
	os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("template = \"minimal\"\n[secrets]\nAPI_KEY = \"nope\"\n"), 0o644)
	o = UpOptions{Image: dir, AllowManifestSecrets: true}
	if err := r.manifestAttachments(&o); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ResolveAttachments(o); !errors.Is(err, ErrAttach) || !strings.Contains(err.Error(), "manifest (mvm.toml) [secrets]") {
		t.Fatalf("unknown secret: %v", err)
	}
}
