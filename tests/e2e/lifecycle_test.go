package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// TestReadmeSequence types the documented sequence as it stands, on a
// python image with a manifest and a task in ./agent.
func TestReadmeSequence(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	work := t.TempDir()
	agent := filepath.Join(work, "agent")
	os.MkdirAll(agent, 0o755)
	os.WriteFile(filepath.Join(agent, "mvm.toml"), []byte("template = \"python\"\n"), 0o644)
	os.WriteFile(filepath.Join(agent, "task.py"), []byte("import platform\nprint('task ran on', platform.python_version())\n"), 0o644)

	if r := e.runAt(work, "build", "./agent"); r.code != 0 {
		t.Fatalf("build: %s", r)
	}
	if r := e.runAt(work, "up", "./agent", "--name", "agent-dev"); r.code != 0 || strings.TrimSpace(r.stdout) != "agent-dev" {
		t.Fatalf("up: %s", r)
	}
	r := e.runAt(work, "exec", "agent-dev", "--", "python", "/work/task.py")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "task ran on 3.") {
		t.Fatalf("exec: %s", r)
	}
	if r := e.runAt(work, "logs", "agent-dev"); r.code != 0 || r.stdout == "" {
		t.Fatalf("logs: %s", r)
	}
	if r := e.runAt(work, "down", "agent-dev"); r.code != 0 {
		t.Fatalf("down: %s", r)
	}
	e.assertClean()
}

func TestConcurrentExecsOnOneSandbox(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must("up", "--name", "busy", "--cpus", "2")
	var wg sync.WaitGroup
	errs := make(chan string, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r := e.run("exec", "busy", "--", "sh", "-c", fmt.Sprintf("echo exec-%d; echo err-%d >&2; exit %d", i, i, i%5))
			if r.code != i%5 || r.stdout != fmt.Sprintf("exec-%d\n", i) || r.stderr != fmt.Sprintf("err-%d\n", i) {
				errs <- fmt.Sprintf("exec %d: %s", i, r)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
	e.must("down", "busy")
	e.assertClean()
}

func TestTenSandboxesAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.extra = append(e.extra, "MVM_BOOT_TIMEOUT=300s")
	var wg sync.WaitGroup
	errs := make(chan string, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := fmt.Sprintf("box-%d", i)
			if r := e.run("up", "--name", name, "--memory", "256M"); r.code != 0 {
				errs <- fmt.Sprintf("up %s: %s", name, r)
				return
			}
			r := e.run("exec", name, "--", "sh", "-c", "echo $(hostname) > /tmp/me; cat /tmp/me")
			if r.code != 0 || strings.TrimSpace(r.stdout) != name {
				errs <- fmt.Sprintf("exec in %s: %s", name, r)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
	if n := len(e.sandboxes()); n != 10 {
		t.Errorf("ls shows %d sandboxes, want 10", n)
	}
	e.must("down", "--all")
	e.assertClean()
}

func TestTTLExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must("up", "--name", "brief", "--ttl", "4s")
	waitFor(t, "the TTL to stop the sandbox", 2*time.Minute, func() bool {
		for _, row := range e.sandboxes() {
			if row["name"] == "brief" && row["state"] == "stopped" && row["reason"] == "ttl" {
				return true
			}
		}
		return false
	})
	if r := e.run("ls"); strings.Contains(r.stdout, "brief") {
		t.Errorf("ls without -a lists a stopped sandbox: %s", r)
	}
	if r := e.run("exec", "brief", "--", "true"); r.code == 0 {
		t.Errorf("exec into a stopped sandbox succeeded")
	}
	e.must("down", "brief")
	e.assertClean()
}

func TestKilledVMMOrSupervisorShowsFailed(t *testing.T) {
	t.Parallel()
	for _, victim := range []string{"vmm_pid", "supervisor_pid"} {
		e := newEnv(t)
		e.must("up", "--name", "victim")
		st := e.stateOf("victim")
		pid := int(st[victim].(float64))
		vmm := int(st["vmm_pid"].(float64))
		syscall.Kill(pid, syscall.SIGKILL)
		waitFor(t, victim+" death to show in ls", time.Minute, func() bool {
			for _, row := range e.sandboxes() {
				if row["name"] == "victim" && row["state"] == "failed" && row["reason"] != "" {
					return true
				}
			}
			return false
		})
		waitFor(t, "the VMM to be gone", time.Minute, func() bool { return syscall.Kill(vmm, 0) != nil || isZombie(vmm) })
		if r := e.run("exec", "victim", "--", "true"); r.code == 0 {
			t.Errorf("%s: exec into a failed sandbox succeeded", victim)
		}
		e.must("down", "victim")
		if r := e.run("down", "victim"); r.code != 3 || !strings.Contains(r.stderr, "no sandbox named") {
			t.Errorf("second down: want exit 3 and a clear message: %s", r)
		}
		e.assertClean()
	}
}

func TestLifecycleErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if r := e.run("down", "nothing-here"); r.code != 3 || !strings.Contains(r.stderr, "no sandbox named") {
		t.Errorf("down unknown: %s", r)
	}
	if r := e.run("exec", "nothing-here", "--", "true"); r.code != 3 {
		t.Errorf("exec unknown: %s", r)
	}
	for _, bad := range []string{"Bad_Name", "-x", strings.Repeat("a", 41), "a/b"} {
		if r := e.run("up", "--name", bad); r.code != 2 || !strings.Contains(r.stderr, "invalid sandbox name") {
			t.Errorf("up --name %q: %s", bad, r)
		}
	}
	if r := e.run("up", "--image", "python-3.12"); r.code != 2 || !strings.Contains(r.stderr, "python-3.11") {
		t.Errorf("unknown template version should list the real ones: %s", r)
	}
	if r := e.run("up", "--image", "no-such-template"); r.code == 0 || !strings.Contains(r.stderr, "minimal") {
		t.Errorf("unknown image should list what exists: %s", r)
	}
	e.must("up", "--name", "twin")
	if r := e.run("up", "--name", "twin"); r.code != 1 || !strings.Contains(r.stderr, "already in use") {
		t.Errorf("duplicate name: %s", r)
	}
	if r := e.run("exec", "--json", "twin", "--", "no-such-cmd"); r.code != 127 || !strings.Contains(r.stdout, `"kind":"not_found"`) {
		t.Errorf("exec --json of a missing command: want an error object and exit 127: %s", r)
	}
	if r := e.run("inspect", "twin"); r.code != 0 || !strings.Contains(r.stdout, `"state":"running"`) || !strings.Contains(r.stdout, `"agent_ready_ms"`) {
		t.Errorf("inspect: %s", r)
	}
	e.must("down", "twin")
	e.assertClean()
}

func TestBuildCacheAndBadManifests(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("template = \"minimal\"\nname = \"tiny\"\nallow = [\"example.com\"]\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "hello.sh"), []byte("echo hello from work\n"), 0o755)
	e.must("build", dir)
	r := e.must("build", "--json", dir)
	if !strings.Contains(r.stdout, `"cached":true`) {
		t.Errorf("second build of the same input is not a cache hit: %s", r)
	}
	e.must("up", dir, "--name", "tiny", "--allow-manifest-network") // the manifest asks for egress
	if r := e.run("exec", "tiny", "--", "sh", "/work/hello.sh"); r.stdout != "hello from work\n" {
		t.Errorf("manifest files not under /work: %s", r)
	}
	if r := e.run("exec", "tiny", "--", "cat", "/proc/net/dev"); !strings.Contains(r.stdout, "eth0") {
		t.Errorf("the manifest's allowlist gave no network interface: %s", r)
	}
	e.must("down", "tiny")
	for _, tc := range []struct{ manifest, want string }{
		{"template = \"minimal\"\nbogus = 1\n", "bogus"},
		{"template = \"minimal\"\ncpus = 99\n", "cpus"},
		{"template = \"minimal\"\nmemory = \"lots\"\n", "memory"},
		{"", "template"},
		{"template = \"minimal\"\nallow = [\"169.254.169.254\"]\n", "allow"},
		{"template = \"minimal\"\nnetwork = \"unrestricted\"\n", "network"},
	} {
		bad := t.TempDir()
		os.WriteFile(filepath.Join(bad, "mvm.toml"), []byte(tc.manifest), 0o644)
		r := e.run("build", bad)
		if r.code != 2 || !strings.Contains(r.stderr, "mvm.toml") || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("manifest %q: want exit 2 naming the file and %q: %s", tc.manifest, tc.want, r)
		}
	}
	e.assertClean()
}

// TestFullDiskIsAClearError: a state directory with no room for the
// sandbox's writable layer fails with a message, not a hang, and leaves
// nothing behind.
func TestFullDiskIsAClearError(t *testing.T) {
	testenv.NeedRoot(t, "mounting a tiny tmpfs")
	t.Parallel()
	e := newEnv(t)
	if err := os.MkdirAll(e.state, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", e.state).CombinedOutput(); err != nil {
		testenv.Missing(t, "cannot mount a tmpfs here: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", e.state).Run()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("template = \"minimal\"\n"), 0o644)
	r := e.run("up", dir, "--name", "full", "--disk", "1G")
	if r.code == 0 || !strings.Contains(r.stderr, "disk") {
		t.Fatalf("want a clear failure naming the disk: %s", r)
	}
	e.assertClean()
}
