// Package ctrtest runs a private containerd for tests and benchmarks of
// the mvm shim: its own root, state, socket and config, the mvm runtime
// registered, the shim on its PATH; and an image built from local files
// (Debian's busybox-static) imported with `ctr image import`.
package ctrtest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/testenv"

	"github.com/mvm-sandbox/mvm/internal/testbin"
)

// Image is the name the test image is imported under.
const Image = "mvm.test/busybox:latest"

// Runtime is the runtime type ctr is given.
const Runtime = "io.containerd.mvm.v2"

// Containerd is a running private containerd.
type Containerd struct {
	Dir, Socket string
	// Env is containerd's environment, which its shims inherit.
	Env []string
	cmd *exec.Cmd
	log *os.File
}

// Start starts containerd in a fresh directory with binDir (holding
// containerd-shim-mvm-v2, mvmctl, mvm-agent) first on its PATH and env
// added to its environment. It is stopped, and its directories removed,
// when tb ends.
func Start(tb testing.TB, binDir string, env []string) *Containerd {
	tb.Helper()
	if _, err := exec.LookPath("containerd"); err != nil {
		tb.Fatalf("containerd is not installed (scripts/test.sh installs Debian's containerd): %v", err)
	}
	// A short directory: socket paths have a length limit.
	dir, err := os.MkdirTemp("", "mvmctr")
	if err != nil {
		tb.Fatal(err)
	}
	c := &Containerd{Dir: dir, Socket: filepath.Join(dir, "c.sock")}
	tb.Cleanup(func() { c.Stop(tb) })
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = "info"

[metrics]
  address = ""

%s
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Socket, c.Socket+".ttrpc", RuntimeSnippet(tb))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		tb.Fatal(err)
	}
	c.Env = append([]string{"PATH=" + binDir + ":" + os.Getenv("PATH")}, env...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") && !overridden(kv, env) {
			c.Env = append(c.Env, kv)
		}
	}
	c.log, err = os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		tb.Fatal(err)
	}
	c.cmd = exec.Command("containerd", "--config", cfgPath)
	c.cmd.Env = c.Env
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		tb.Fatalf("start containerd: %v", err)
	}
	answers := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _, code := c.Ctr(ctx, nil, "version")
		return code == 0
	}
	if !testenv.Poll(60*time.Second, 100*time.Millisecond, answers) {
		tb.Fatalf("containerd did not answer within 60s:\n%s", c.LogTail())
	}
	return c
}

func overridden(kv string, env []string) bool {
	k, _, _ := strings.Cut(kv, "=")
	for _, e := range env {
		if strings.HasPrefix(e, k+"=") {
			return true
		}
	}
	return false
}

// RuntimeSnippet is the containerd config that registers the mvm runtime
// for the CRI: deploy/kubernetes/containerd-mvm.toml, as shipped.
func RuntimeSnippet(tb testing.TB) string {
	b, err := os.ReadFile(filepath.Join(testbin.Root(), "deploy", "kubernetes", "containerd-mvm.toml"))
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// LogTail is the end of containerd's log (shim logs go there too).
func (c *Containerd) LogTail() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "containerd.log"))
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

// Ctr runs ctr against this containerd, in namespace "mvmtest".
func (c *Containerd) Ctr(ctx context.Context, stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	cmd := c.CtrCommand(ctx, args...)
	var so, se bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &so, &se
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		return so.String(), se.String() + err.Error(), -1
	}
	return so.String(), se.String(), code
}

// CtrCommand prepares a ctr command.
func (c *Containerd) CtrCommand(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.Socket, "--namespace", "mvmtest"}, args...)...)
	cmd.Env = c.Env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Stop stops containerd (and, through their hold, every VM of its shims)
// and removes its directories, whatever state it is in.
func (c *Containerd) Stop(tb testing.TB) {
	if c.cmd != nil && c.cmd.Process != nil {
		c.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		c.cmd = nil
	}
	// Shims are in their own process groups: kill any still serving this
	// containerd (they are found by the address in their command line).
	for _, pid := range c.Shims() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, m := range c.Mounts() {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
	if c.log != nil {
		c.log.Close()
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		tb.Errorf("remove containerd dir: %v", err)
	}
}

// Shims lists the pids of shim processes serving this containerd.
func (c *Containerd) Shims() []int {
	return Processes(func(cmdline string) bool {
		return strings.Contains(cmdline, "containerd-shim-mvm-v2") && strings.Contains(cmdline, c.Socket)
	})
}

// Processes lists live (not zombie) processes whose NUL-separated command
// line matches.
func Processes(match func(cmdline string) bool) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		var pid int
		if _, err := fmt.Sscanf(ent.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		stat, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue
		}
		if match(string(cmdline)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Mounts lists mount points under this containerd's directories.
func (c *Containerd) Mounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], c.Dir) {
			out = append(out, fields[4])
		}
	}
	// Innermost first.
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// ImportImage builds a one-layer image from the host's static busybox
// (Debian's busybox-static) in docker-archive form and imports it as
// Image.
func (c *Containerd) ImportImage(tb testing.TB) {
	tb.Helper()
	tarPath := filepath.Join(c.Dir, "image.tar")
	if err := WriteBusyboxImage(tarPath, Image); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, errOut, code := c.Ctr(ctx, nil, "image", "import", tarPath); code != 0 {
		tb.Fatalf("ctr image import: exit %d\n%s%s", code, out, errOut)
	}
}

// busyboxApplets are the links the test image has to /bin/busybox.
var busyboxApplets = []string{"sh", "echo", "cat", "true", "false", "sleep", "ps", "id", "env", "ls", "wc", "head", "stty", "tty", "kill", "pwd", "printf", "test", "uname"}

// WriteBusyboxImage writes a docker-archive image (what `docker save`
// writes) holding /bin/busybox and its applet links.
func WriteBusyboxImage(path, name string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("read /bin/busybox (install busybox-static): %w", err)
	}
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	now := time.Unix(0, 0)
	for _, d := range []string{"bin/", "tmp/", "proc/", "sys/", "dev/", "etc/", "root/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		lw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: mode, ModTime: now})
	}
	lw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb)), ModTime: now})
	lw.Write(bb)
	for _, a := range busyboxApplets {
		lw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777, ModTime: now})
	}
	passwd := "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
	lw.WriteHeader(&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(passwd)), ModTime: now})
	lw.Write([]byte(passwd))
	if err := lw.Close(); err != nil {
		return err
	}
	sum := sha256.Sum256(layer.Bytes())
	diffID := "sha256:" + hex.EncodeToString(sum[:])
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Env": []string{"PATH=/bin"}, "Cmd": []string{"/bin/sh"}, "WorkingDir": "/"},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	})
	csum := sha256.Sum256(config)
	configName := hex.EncodeToString(csum[:]) + ".json"
	manifest, _ := json.Marshal([]map[string]any{{"Config": configName, "RepoTags": []string{name}, "Layers": []string{"layer.tar"}}})
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, e := range []struct {
		name string
		data []byte
	}{{configName, config}, {"layer.tar", layer.Bytes()}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(e.data)), ModTime: now}); err != nil {
			return err
		}
		if _, err := tw.Write(e.data); err != nil {
			return err
		}
	}
	return tw.Close()
}
