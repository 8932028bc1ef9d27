package backend

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/testenv"
)

func waitDone(t *testing.T, p *Process) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("process never reported done")
	}
}

func TestProcessCleanExit(t *testing.T) {
	p, err := StartProcess(exec.Command("true"), "vmm", filepath.Join(t.TempDir(), "vmm.log"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Pid() <= 0 {
		t.Fatalf("pid %d", p.Pid())
	}
	waitDone(t, p)
	if err := p.ExitErr(); err != nil {
		t.Fatalf("clean exit described as %v", err)
	}
	if err := p.Kill(); err != nil {
		t.Fatalf("kill after exit: %v", err)
	}
}

// TestProcessExitNamesTheLastLogLine: a failed VMM's error carries its
// name, the exit status and the last line of its log, bounded.
func TestProcessExitNamesTheLastLogLine(t *testing.T) {
	log := filepath.Join(t.TempDir(), "vmm.log")
	os.WriteFile(log, []byte("starting\nqemu-system-x86_64: -drive file=x: Could not open 'x'\n\n"), 0o600)
	p, err := StartProcess(exec.Command("sh", "-c", "exit 3"), "qemu", log)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, p)
	err = p.ExitErr()
	if err == nil || err.Error() != "qemu exit status 3: qemu-system-x86_64: -drive file=x: Could not open 'x'" {
		t.Fatalf("exit error %q", err)
	}

	// a log line of any length is cut at 512 bytes
	os.WriteFile(log, []byte(strings.Repeat("z", 100000)), 0o600)
	p, _ = StartProcess(exec.Command("sh", "-c", "exit 1"), "vmm", log)
	waitDone(t, p)
	if n := len(p.ExitErr().Error()); n > len("vmm exit status 1: ")+512 {
		t.Fatalf("unbounded exit message: %d bytes", n)
	}

	// no log at all: the status alone
	p, _ = StartProcess(exec.Command("sh", "-c", "exit 2"), "vmm", filepath.Join(t.TempDir(), "none"))
	waitDone(t, p)
	if got := p.ExitErr().Error(); got != "vmm exit status 2" {
		t.Fatalf("exit error %q", got)
	}
}

func TestProcessKillWaits(t *testing.T) {
	p, err := StartProcess(exec.Command("sleep", "600"), "vmm", filepath.Join(t.TempDir(), "vmm.log"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("Kill returned before the process was waited for")
	}
	if err := p.ExitErr(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("exit error %v", err)
	}
	if err := syscall.Kill(p.Pid(), 0); err == nil {
		t.Fatal("process still exists after Kill")
	}
}

func TestProcessStartFailure(t *testing.T) {
	_, err := StartProcess(exec.Command("/nonexistent/vmm"), "firecracker", "")
	if err == nil || !strings.HasPrefix(err.Error(), "firecracker: start:") {
		t.Fatalf("err %v", err)
	}
}

// TestProcessDiesWithItsParent: the VMM gets PR_SET_PDEATHSIG, so a
// supervisor killed with SIGKILL takes its VM with it. A helper process
// (this test binary) starts a VMM stand-in and is then killed.
func TestProcessDiesWithItsParent(t *testing.T) {
	if os.Getenv("MVM_TEST_PDEATH_PARENT") == "1" {
		p, err := StartProcess(exec.Command("sleep", "600"), "vmm", "")
		if err != nil {
			os.Exit(1)
		}
		os.Stdout.WriteString(strconv.Itoa(p.Pid()) + "\n")
		select {} // wait to be killed
	}
	parent := exec.Command(os.Args[0], "-test.run=^TestProcessDiesWithItsParent$")
	parent.Env = append(os.Environ(), "MVM_TEST_PDEATH_PARENT=1")
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 32)
	n, _ := out.Read(buf)
	child, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		parent.Process.Kill()
		t.Fatalf("helper said %q", buf[:n])
	}
	parent.Process.Kill()
	parent.Wait()
	// the child is reparented (to init or a subreaper) and reaped there;
	// a zombie counts as gone
	if !testenv.Poll(10*time.Second, 20*time.Millisecond, func() bool {
		st, err := os.ReadFile("/proc/" + strconv.Itoa(child) + "/stat")
		return err != nil || strings.Contains(string(st), ") Z ")
	}) {
		syscall.Kill(child, syscall.SIGKILL)
		t.Fatalf("VMM %d outlived its parent", child)
	}
}
