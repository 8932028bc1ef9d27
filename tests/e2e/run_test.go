package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/testbin"
)

func TestRunExitCodeAndStreams(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.run("run", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7")
	if r.code != 7 {
		t.Fatalf("want exit 7: %s", r)
	}
	if r.stdout != "to-out\n" || r.stderr != "to-err\n" {
		t.Fatalf("streams mixed or lost: %s", r)
	}
	e.assertClean()
}

func TestRunEnvCwdAndStdin(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.runIn(strings.NewReader("hi from the host\n"), "run", "-e", "GREETING=hello world", "-w", "/tmp",
		"--", "sh", "-c", `echo "$GREETING"; pwd; cat`)
	if r.code != 0 {
		t.Fatalf("run: %s", r)
	}
	if want := "hello world\n/tmp\nhi from the host\n"; r.stdout != want {
		t.Fatalf("stdout = %q, want %q", r.stdout, want)
	}
	e.assertClean()
}

func TestRunBinaryStdout16MiB(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// The guest makes 16 MiB of random bytes, writes them to stdout and
	// their checksum to stderr; the host must receive exactly those bytes.
	r := e.run("run", "--memory", "256M", "--", "sh", "-c",
		"head -c 16777216 /dev/urandom > /tmp/blob && cat /tmp/blob && sha256sum /tmp/blob >&2")
	if r.code != 0 {
		t.Fatalf("run: exit %d stderr %q", r.code, r.stderr)
	}
	if len(r.stdout) != 16<<20 {
		t.Fatalf("got %d bytes of stdout, want %d", len(r.stdout), 16<<20)
	}
	sum := sha256.Sum256([]byte(r.stdout))
	if got, want := hex.EncodeToString(sum[:]), strings.Fields(r.stderr)[0]; got != want {
		t.Fatalf("checksum mismatch: host %s guest %s", got, want)
	}
	e.assertClean()
}

func TestRunErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.run("run", "--", "no-such-command", "arg")
	if r.code != 127 || !strings.Contains(r.stderr, "no-such-command: command not found") {
		t.Fatalf("missing command: %s", r)
	}
	for _, args := range [][]string{
		{"run"},
		{"run", "--memory", "lots", "--", "true"},
		{"run", "--cpus", "0", "--", "true"},
		{"run", "-e", "1BAD=x", "--", "true"},
		{"run", "--no-such-flag", "--", "true"},
	} {
		r := e.run(args...)
		if r.code != 2 || r.stderr == "" {
			t.Errorf("mvmctl %v: want usage error (exit 2) with a message: %s", args, r)
		}
	}
	e.assertClean()
}

func TestRunMissingKernelIsClearError(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.extra = append(e.extra, "MVM_CACHE_DIR="+t.TempDir())
	r := e.run("run", "--", "true")
	if r.code != 125 || !strings.Contains(r.stderr, "mvmctl setup") {
		t.Fatalf("want exit 125 telling to run setup: %s", r)
	}
	e.assertClean()
}

func TestRunTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	t0 := time.Now()
	r := e.run("run", "--timeout", "3s", "--", "sleep", "600")
	if r.code != 124 || !strings.Contains(r.stderr, "timed out") {
		t.Fatalf("want exit 124 with a message: %s", r)
	}
	if time.Since(t0) > 2*time.Minute {
		t.Fatalf("timeout did not stop the run promptly (%s)", time.Since(t0))
	}
	e.assertClean()
}

func TestRunJSON(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.run("run", "--json", "--", "sh", "-c", "printf abc; printf de >&2; exit 4")
	if r.code != 4 {
		t.Fatalf("want exit 4: %s", r)
	}
	var obj struct {
		SandboxID   string           `json:"sandbox_id"`
		ExitCode    int              `json:"exit_code"`
		Stdout      string           `json:"stdout"`
		StdoutBytes int              `json:"stdout_bytes"`
		StderrBytes int              `json:"stderr_bytes"`
		Timings     map[string]int64 `json:"timings"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &obj); err != nil {
		t.Fatalf("not one JSON object: %v\n%s", err, r)
	}
	if obj.ExitCode != 4 || obj.Stdout != "abc" || obj.StdoutBytes != 3 || obj.StderrBytes != 2 || obj.SandboxID == "" {
		t.Fatalf("unexpected result %+v", obj)
	}
	if obj.Timings["boot_ms"] <= 0 || obj.Timings["exec_ms"] <= 0 {
		t.Fatalf("timings missing: %v", obj.Timings)
	}
	e.assertClean()
}

// startRun starts `mvmctl run -- ARGV` in the background and waits until
// its sandbox is running; it returns the command and the sandbox state.
func startRun(t *testing.T, e *env, argv ...string) (*runningCmd, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := e.command(ctx, append([]string{"run", "--"}, argv...)...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	rc := &runningCmd{done: make(chan struct{}), cancel: cancel, stdout: &so, stderr: &se}
	go func() {
		err := cmd.Wait()
		rc.code = cmd.ProcessState.ExitCode()
		_ = err
		close(rc.done)
	}()
	rc.pid = cmd.Process.Pid
	var st map[string]any
	waitFor(t, "the sandbox to run", 3*time.Minute, func() bool {
		for _, id := range e.sandboxDirs() {
			b, err := os.ReadFile(filepath.Join(e.state, "sb", id, "state.json"))
			if err == nil && json.Unmarshal(b, &st) == nil && st["status"] == "running" {
				return true
			}
		}
		return false
	})
	return rc, st
}

type runningCmd struct {
	pid            int
	code           int
	done           chan struct{}
	cancel         func()
	stdout, stderr *bytes.Buffer
}

func (rc *runningCmd) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-rc.done:
		rc.cancel()
		return rc.code
	case <-time.After(d):
		t.Fatalf("mvmctl did not exit within %s", d)
		return -1
	}
}

func TestRunSignalsTearDown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		sig  syscall.Signal
		code int
	}{{syscall.SIGINT, 130}, {syscall.SIGTERM, 143}} {
		e := newEnv(t)
		rc, _ := startRun(t, e, "sleep", "600")
		syscall.Kill(rc.pid, tc.sig)
		if code := rc.wait(t, time.Minute); code != tc.code {
			t.Errorf("%v: exit %d, want %d (stderr %q)", tc.sig, code, tc.code, rc.stderr)
		}
		e.assertClean()
	}
}

func TestSupervisorKillTakesVMDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc, st := startRun(t, e, "sleep", "600")
	sup, vmm := int(st["supervisor_pid"].(float64)), int(st["vmm_pid"].(float64))
	if err := syscall.Kill(sup, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the VMM to die with its supervisor", time.Minute, func() bool {
		return syscall.Kill(vmm, 0) != nil || isZombie(vmm)
	})
	if code := rc.wait(t, time.Minute); code == 0 {
		t.Fatalf("run succeeded although its VM was killed")
	}
	e.assertClean()
}

// TestSupervisorKillDuringRestore: a warm `run` whose supervisor is
// SIGKILLed while it restores the ready snapshot fails; it does not take
// the kill for a snapshot that would not restore and boot a second VM
// cold behind the killer's back (it used to, and then ran the command
// there: `run -- sleep 600` never returned). The VMM is stopped first so
// that the kill lands inside the restore, whatever the machine's speed.
func TestSupervisorKillDuringRestore(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.privateCache()
	e.must("run", "--", "true") // records the ready snapshot
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := e.command(ctx, "run", "--", "sleep", "600")
		var so, se bytes.Buffer
		cmd.Stdout, cmd.Stderr = &so, &se
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		var st map[string]any
		waitFor(t, "the restore's VMM", 3*time.Minute, func() bool {
			for _, id := range e.sandboxDirs() {
				b, err := os.ReadFile(filepath.Join(e.state, "sb", id, "state.json"))
				if err == nil && json.Unmarshal(b, &st) == nil && st["vmm_pid"] != nil {
					return true
				}
			}
			return false
		})
		vmm, sup := int(st["vmm_pid"].(float64)), int(st["supervisor_pid"].(float64))
		if b, _ := st["boot"].(map[string]any); b["start"] != "restored" {
			t.Fatalf("the run did not restore: %v", st["boot"])
		}
		syscall.Kill(vmm, syscall.SIGSTOP) // the restore cannot finish now
		b, _ := os.ReadFile(filepath.Join(e.state, "sb", st["id"].(string), "state.json"))
		json.Unmarshal(b, &st)
		syscall.Kill(sup, syscall.SIGKILL) // and the VMM dies with it
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Fatalf("run did not exit within a minute after its supervisor was killed\nstderr: %s", se.String())
		}
		if st["status"] == "running" && attempt < 3 {
			t.Logf("attempt %d: the restore had finished before the VMM was stopped; again", attempt)
			continue
		}
		if st["status"] == "running" {
			t.Fatal("three restores finished before the test could stop their VMM")
		}
		if cmd.ProcessState.ExitCode() == 0 {
			t.Fatalf("run succeeded although its supervisor was killed: %s", so.String())
		}
		if strings.Contains(se.String(), "booting") {
			t.Fatalf("run booted again after its supervisor was killed:\n%s", se.String())
		}
		// The VMM dies with its supervisor, but a killed QEMU that held a
		// restored guest's memory takes a moment to exit; no second one
		// may appear meanwhile.
		waitFor(t, "the VMM to die with its supervisor", time.Minute, func() bool {
			return syscall.Kill(vmm, 0) != nil || isZombie(vmm)
		})
		waitFor(t, "no supervisor or VMM left", time.Minute, func() bool { return len(e.processes()) == 0 })
		break
	}
	e.assertClean()
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// TestDynamicAgentRefused: `go build -o DIR/ ./cmd/...` with cgo on links
// the agent dynamically; it cannot run as the guest's /init, so `run`
// refuses it before booting, says how to rebuild, and leaves nothing.
func TestDynamicAgentRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/...")
	cmd.Dir = testbin.Root()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run := exec.CommandContext(ctx, filepath.Join(dir, "mvmctl"), "run", "--", "echo", "installed")
	run.Env = e.environ()
	out, err := run.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("run with a dynamically linked agent: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "dynamically linked") || !strings.Contains(string(out), "CGO_ENABLED=0") {
		t.Fatalf("error does not say what to do:\n%s", out)
	}
	if strings.Contains(string(out), "installed\n") {
		t.Fatalf("the command ran:\n%s", out)
	}
	e.assertClean()
}

// TestKilledRunLeavesNothing: a `run` killed with SIGKILL cannot clean up
// itself; its supervisor notices the hold connection close and tears the
// sandbox down.
func TestKilledRunLeavesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc, _ := startRun(t, e, "sleep", "600")
	syscall.Kill(rc.pid, syscall.SIGKILL)
	rc.wait(t, time.Minute)
	waitFor(t, "the orphaned sandbox to be torn down", time.Minute, func() bool {
		return len(e.sandboxDirs()) == 0 && len(e.processes()) == 0
	})
	e.assertClean()
}

// TestGuestClockSource: a guest keeps a real clocksource, cold-booted
// and restored alike. Under TCG the kernel's watchdog used to judge the
// TSC by jiffies (which lose ticks when the vCPU thread is starved),
// mark it unstable and fall back to jiffies: 4 ms clock readings, guest
// time lagging under load, and busybox's nslookup stalling 5 s.
func TestGuestClockSource(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const path = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
	for _, mode := range [][]string{{"run"}, {"run", "--cold"}} {
		r := e.must(append(mode, "--", "cat", path)...)
		cs := strings.TrimSpace(r.stdout)
		if cs == "" || strings.Contains(cs, "jiffies") {
			t.Errorf("%v: guest clocksource %q, want the TSC (or kvm-clock)", mode, cs)
		}
	}
	e.assertClean()
}
