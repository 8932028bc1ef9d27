package manifest

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/secret"
	"github.com/mvm-sandbox/mvm/internal/volume"
)

func TestSmallest(t *testing.T) {
	m, err := Parse("/d/mvm.toml", []byte(`template = "python"`))
	if err != nil {
		t.Fatal(err)
	}
	if m.Template != "python" || m.Workdir != "/work" || m.Profile != "dev" || m.DiskMiB != 4096 {
		t.Fatalf("defaults: %+v", m)
	}
	want := []FileMapping{{Guest: "/work", Source: ".", Exclude: []string{"mvm.toml", ".git"}}}
	if !reflect.DeepEqual(m.Files, want) {
		t.Fatalf("files: %+v", m.Files)
	}
	if m.Dir != "/d" || m.Path != "/d/mvm.toml" {
		t.Fatalf("path: %q %q", m.Dir, m.Path)
	}
}

func TestFull(t *testing.T) {
	src := `
template = "python-3.11"
name = "my-app"
packages = ["curl", "git", "curl"]
cpus = 2
memory = "1G"
disk = 8192
command = ["python", "main.py"]
workdir = "/srv"
profile = "sealed"

[env]
FOO = "bar"
_X1 = ""

[files]
"/opt/app" = "src"
"/work" = ""
`
	m, err := Parse("/d/mvm.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "my-app" || m.CPUs != 2 || m.MemoryMiB != 1024 || m.DiskMiB != 8192 ||
		m.Workdir != "/srv" || m.Profile != "sealed" || m.Template != "python-3.11" {
		t.Fatalf("%+v", m)
	}
	if !reflect.DeepEqual(m.Packages, []string{"curl", "git"}) {
		t.Fatalf("packages %v", m.Packages)
	}
	if !reflect.DeepEqual(m.Command, []string{"python", "main.py"}) {
		t.Fatalf("command %v", m.Command)
	}
	if !reflect.DeepEqual(m.Env, map[string]string{"FOO": "bar", "_X1": ""}) {
		t.Fatalf("env %v", m.Env)
	}
	if !reflect.DeepEqual(m.Files, []FileMapping{{Guest: "/opt/app", Source: "src"}}) {
		t.Fatalf("files %+v", m.Files)
	}
}

func TestErrorsNameFileKeyLine(t *testing.T) {
	cases := []struct {
		name, src, key string
		line           int
		msg            string
	}{
		{"unknown top", "template = \"python\"\nfoo = 1\n", "foo", 2, "unknown key"},
		{"unknown table", "template = \"python\"\n[bar]\nx = 1\n", "bar", 2, "unknown key"},
		{"missing template", "name = \"x\"\n", "template", 0, "required"},
		{"template type", "template = 3\n", "template", 1, "wrong type"},
		{"bad template", "template = \"Py thon\"\n", "template", 1, "invalid template"},
		{"bad name", "template = \"python\"\nname = \"-x\"\n", "name", 2, "invalid name"},
		{"long name", "template = \"python\"\nname = \"" + strings.Repeat("a", 64) + "\"\n", "name", 2, "invalid name"},
		{"cpus type", "template = \"python\"\ncpus = \"2\"\n", "cpus", 2, "integer"},
		{"cpus range", "template = \"python\"\n\ncpus = 17\n", "cpus", 3, "between 1 and 16"},
		{"cpus zero", "template = \"python\"\ncpus = 0\n", "cpus", 2, "between"},
		{"memory small", "template = \"python\"\nmemory = \"64M\"\n", "memory", 2, "between 128M and 16G"},
		{"memory big", "template = \"python\"\nmemory = 32768\n", "memory", 2, "between"},
		{"memory junk", "template = \"python\"\nmemory = \"lots\"\n", "memory", 2, "invalid size"},
		{"memory bool", "template = \"python\"\nmemory = true\n", "memory", 2, "size string"},
		{"disk junk", "template = \"python\"\ndisk = \"4Q\"\n", "disk", 2, "invalid size"},
		{"packages type", "template = \"python\"\npackages = \"curl\"\n", "packages", 2, "list of package names"},
		{"package name", "template = \"python\"\npackages = [\"ok\", \"Bad Name\"]\n", "packages", 2, "not a Debian package"},
		{"package option", "template = \"python\"\npackages = [\"--allow-unauthenticated\"]\n", "packages", 2, "not a Debian package"},
		{"env key", "template = \"python\"\n[env]\n\"1X\" = \"a\"\n", `env.1X`, 3, "invalid environment variable"},
		{"env value", "template = \"python\"\n[env]\nA = 1\n", "env.A", 3, "must be a string"},
		{"env nested", "template = \"python\"\n[env.A]\nB = \"x\"\n", "env.A", 2, "must be a string"},
		{"command type", "template = \"python\"\ncommand = \"python main.py\"\n", "command", 2, "list of strings"},
		{"command empty", "template = \"python\"\ncommand = []\n", "command", 2, "empty"},
		{"command item", "template = \"python\"\ncommand = [\"a\", 1]\n", "command", 2, "entry 1"},
		{"workdir rel", "template = \"python\"\nworkdir = \"work\"\n", "workdir", 2, "absolute"},
		{"workdir unclean", "template = \"python\"\nworkdir = \"/a/../b\"\n", "workdir", 2, "not clean"},
		{"profile", "template = \"python\"\nprofile = \"prod\"\n", "profile", 2, `"dev" or "sealed"`},
		{"files escape", "template = \"python\"\n[files]\n\"/opt\" = \"../x\"\n", `files."/opt"`, 3, "leaves the manifest directory"},
		{"files abs", "template = \"python\"\n[files]\n\"/opt\" = \"/etc\"\n", `files."/opt"`, 3, "relative"},
		{"files guest rel", "template = \"python\"\n[files]\n\"opt\" = \"x\"\n", "files.opt", 3, "absolute"},
		{"files proc", "template = \"python\"\n[files]\n\"/proc/x\" = \"x\"\n", `files."/proc/x"`, 3, "runtime owns"},
		{"files type", "template = \"python\"\n[files]\n\"/opt\" = 1\n", `files."/opt"`, 3, "must be a string"},
		{"duplicate", "template = \"python\"\ncpus = 1\ncpus = 2\n", "cpus", 3, "already defined"},
		{"syntax", "template = \"python\n", "", 1, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("/some/dir/mvm.toml", []byte(c.src))
			if err == nil {
				t.Fatal("no error")
			}
			s := err.Error()
			if !strings.Contains(s, "/some/dir/mvm.toml") {
				t.Errorf("error does not name the file: %s", s)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("not a *Error: %T %v", err, err)
			}
			if e.Key != c.key {
				t.Errorf("key = %q, want %q (%s)", e.Key, c.key, s)
			}
			if c.key != "" && !strings.Contains(s, c.key) {
				t.Errorf("error does not name the key: %s", s)
			}
			if e.Line != c.line {
				t.Errorf("line = %d, want %d (%s)", e.Line, c.line, s)
			}
			if !strings.Contains(s, c.msg) {
				t.Errorf("error %q does not contain %q", s, c.msg)
			}
		})
	}
}

func TestMultipleErrors(t *testing.T) {
	_, err := Parse("m.toml", []byte("template = \"python\"\ncpus = 99\nprofile = \"x\"\n"))
	var l ErrorList
	if !errors.As(err, &l) || len(l) != 2 {
		t.Fatalf("want 2 errors, got %v", err)
	}
	if l[0].Key != "cpus" || l[1].Key != "profile" {
		t.Fatalf("order: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"512M": 512, "512": 512, "1G": 1024, "1g": 1024, "1.5G": 1536, "2GiB": 2048,
		"256MiB": 256, "256MB": 256, "4G": 4096, "1T": 1024 * 1024, " 8G ": 8192,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "-1G", "0", "0M", "1.3M", "abc", "1K", "1e3", "0x10", "NaN", "Inf", "1_000", "1.0000001G"} {
		if v, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want error", in, v)
		}
	}
	if FormatSize(2048) != "2G" || FormatSize(512) != "512M" {
		t.Error("FormatSize")
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) {
		t.Helper()
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "no mvm.toml") {
		t.Fatalf("missing manifest: %v", err)
	}
	write("src/a.py", "print(1)\n")
	write("mvm.toml", "template = \"python\"\n[files]\n\"/opt/app\" = \"src\"\n")
	m, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Files) != 2 || m.SourcePath(m.Files[1]) != filepath.Join(dir, "src") {
		t.Fatalf("%+v", m.Files)
	}

	write("mvm.toml", "template = \"python\"\n[files]\n\"/opt/app\" = \"nope\"\n")
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), `files."/opt/app"`) || !strings.Contains(err.Error(), ":3:") {
		t.Fatalf("missing source: %v", err)
	}

	// a symlink that points outside DIR is refused
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	write("mvm.toml", "template = \"python\"\n[files]\n\"/opt/app\" = \"out\"\n")
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "outside the manifest directory") {
		t.Fatalf("escape via symlink: %v", err)
	}
}

func TestNetworkKeys(t *testing.T) {
	m, err := Parse("/x/mvm.toml", []byte("template = \"python\"\nallow = [\"pypi.org\", \"files.pythonhosted.org:443\"]\n"))
	if err != nil || len(m.Allow) != 2 {
		t.Fatalf("allow: %+v %v", m, err)
	}
	m, err = Parse("/x/mvm.toml", []byte("template = \"python\"\nnetwork = \"registries\"\n"))
	if err != nil || m.Network != "registries" {
		t.Fatalf("preset: %+v %v", m, err)
	}
	for _, tc := range []struct{ body, key string }{
		{"template = \"python\"\nnetwork = \"unrestricted\"\n", "network"},
		{"template = \"python\"\nnetwork = \"no-such-preset\"\n", "network"},
		{"template = \"python\"\nallow = [\"bad host!\"]\n", "allow"},
		{"template = \"python\"\nnetwork = \"none\"\nallow = [\"pypi.org\"]\n", "allow"},
	} {
		_, err := Parse("/x/mvm.toml", []byte(tc.body))
		if err == nil || !strings.Contains(err.Error(), "/x/mvm.toml") || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%q: want an error naming the file and %s, got %v", tc.body, tc.key, err)
		}
	}
}

// A manifest can never allow the host's own loopback (issue 11 item 3).
func TestManifestNeverAllowsHostInternal(t *testing.T) {
	for _, body := range []string{
		"template = \"python\"\nallow = [\"host.mvm.internal:22\"]\n",
		"template = \"python\"\nallow = [\"pypi.org\", \"HOST.MVM.INTERNAL.:2375\"]\n",
	} {
		_, err := Parse("/x/mvm.toml", []byte(body))
		if err == nil || !strings.Contains(err.Error(), "key allow") || !strings.Contains(err.Error(), "host.mvm.internal") {
			t.Errorf("%q: want a refusal naming key allow and host.mvm.internal, got %v", body, err)
		}
	}
}

// The unknown-key hint lists every top-level key, network and allow
// included.
func TestUnknownKeyHintListsAllKeys(t *testing.T) {
	_, err := Parse("/x/mvm.toml", []byte("template = \"python\"\nalow = [\"pypi.org\"]\n"))
	if err == nil {
		t.Fatal("unknown key accepted")
	}
	for _, k := range []string{"template", "name", "packages", "files", "env", "cpus", "memory", "disk", "command", "workdir", "profile", "network", "allow"} {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("hint lacks %q: %v", k, err)
		}
	}
}

// [[mount]] tables: host directories resolve against the manifest's
// directory, modes default like -v (host ro, volume rw), every entry is
// marked as the manifest's, and bad entries name their table and line.
func TestMountTables(t *testing.T) {
	src := `template = "python"

[[mount]]
host  = "data"
guest = "/data"

[[mount]]
host  = "/srv/models"
guest = "/models"
mode  = "rw"

[[mount]]
volume = "pip-cache"
guest  = "/root/.cache/pip"
`
	m, err := Parse("/proj/mvm.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []volume.MountSpec{
		{Source: "/proj/data", Target: "/data", ReadOnly: true, Origin: volume.OriginManifest},
		{Source: "/srv/models", Target: "/models", Origin: volume.OriginManifest},
		{Source: "pip-cache", Target: "/root/.cache/pip", Volume: true, Origin: volume.OriginManifest},
	}
	if len(m.Mounts) != len(want) {
		t.Fatalf("mounts %+v", m.Mounts)
	}
	for i := range want {
		if m.Mounts[i] != want[i] {
			t.Errorf("mount %d: %+v, want %+v", i, m.Mounts[i], want[i])
		}
	}
	if m2, _ := Parse("/proj/mvm.toml", []byte("template = \"python\"\n[[mount]]\nhost = \"../shared\"\nguest = \"/s\"\n")); m2 == nil || m2.Mounts[0].Source != "/shared" {
		t.Errorf("relative host path not resolved against the manifest directory: %+v", m2)
	}

	bad := []struct{ body, want string }{
		{"[[mount]]\nguest = \"/d\"\n", "exactly one of host"},
		{"[[mount]]\nhost = \"d\"\nvolume = \"v\"\nguest = \"/d\"\n", "exactly one of host"},
		{"[[mount]]\nhost = \"d\"\n", "guest is required"},
		{"[[mount]]\nhost = \"d\"\nguest = \"relative\"\n", "must be absolute"},
		{"[[mount]]\nhost = \"d\"\nguest = \"/proc/x\"\n", "/proc"},
		{"[[mount]]\nhost = \"d\"\nguest = \"/\"\n", "guest path /"},
		{"[[mount]]\nhost = \"d\"\nguest = \"/d\"\nmode = \"rwx\"\n", `mode must be "ro" or "rw"`},
		{"[[mount]]\nhost = \"~/d\"\nguest = \"/d\"\n", "~ is not expanded"},
		{"[[mount]]\nhost = \"\"\nguest = \"/d\"\n", "must not be empty"},
		{"[[mount]]\nvolume = \"../x\"\nguest = \"/d\"\n", "volume:"},
		{"[[mount]]\nhost = \"d\"\nguest = \"/d\"\nsource = \"x\"\n", `unknown key "source"`},
		{"[[mount]]\nhost = 3\nguest = \"/d\"\n", "host must be a string"},
		{"mount = \"d:/d\"\n", "key mount"},
		{strings.Repeat("[[mount]]\nvolume = \"v\"\nguest = \"/d\"\n", MaxMounts+1), "exceed the limit"},
	}
	for _, b := range bad {
		_, err := Parse("/proj/mvm.toml", []byte("template = \"python\"\n"+b.body))
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%q: got %v, want %q", b.body, err, b.want)
		}
	}
	// The second table's problem names it and its line.
	_, err = Parse("/proj/mvm.toml", []byte("template = \"python\"\n[[mount]]\nhost = \"a\"\nguest = \"/a\"\n[[mount]]\nhost = \"b\"\nguest = \"b\"\n"))
	if err == nil || !strings.Contains(err.Error(), "mvm.toml:5: key mount[1]: guest") {
		t.Errorf("error does not name the table and line: %v", err)
	}
}

// [secrets]: TARGET = "NAME", names only, checked like --secret.
func TestSecretsTable(t *testing.T) {
	m, err := Parse("/proj/mvm.toml", []byte("template = \"python\"\n[secrets]\nOPENAI_API_KEY = \"openai\"\n\"/run/secrets/tls.pem\" = \"tls-key\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []secret.Ref{
		{Name: "tls-key", Path: "/run/secrets/tls.pem", Origin: volume.OriginManifest},
		{Name: "openai", Env: "OPENAI_API_KEY", Origin: volume.OriginManifest},
	}
	if len(m.Secrets) != 2 || m.Secrets[0] != want[0] || m.Secrets[1] != want[1] {
		t.Fatalf("secrets %+v", m.Secrets)
	}
	for body, want := range map[string]string{
		"K = 3":                   "value must be the name of a stored secret",
		"K = \"../x\"":            "secret",
		"\"1BAD\" = \"x\"":        "not an environment variable name",
		"\"/etc/passwd\" = \"x\"": "/run/secrets/FILE",
		"K = \"sk-live-12345\"":   "", // a value-looking name is still only a name
	} {
		_, err := Parse("/proj/mvm.toml", []byte("template = \"python\"\n[secrets]\n"+body+"\n"))
		if want == "" {
			if err != nil {
				t.Errorf("%s: %v", body, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "key secrets.") {
			t.Errorf("%s: got %v, want %q", body, err, want)
		}
	}
}
