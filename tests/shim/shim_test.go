package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/testenv"

	"github.com/creack/pty"

	"github.com/mvm-sandbox/mvm/internal/shim/ctrtest"
)

// world is one test's containerd plus its private mvm state.
type world struct {
	t     *testing.T
	c     *ctrtest.Containerd
	state string
	data  string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	base := t.TempDir()
	w := &world{t: t, state: filepath.Join(base, "state"), data: filepath.Join(base, "data")}
	w.c = ctrtest.Start(t, binDir, []string{"MVM_STATE_DIR=" + w.state, "MVM_DATA_DIR=" + w.data})
	// Registered after Start's cleanup, so it runs first: the test's
	// own leftovers are reported before containerd is torn down.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log:\n%s", w.c.LogTail())
		}
		if p := w.vmProcesses(); len(p) > 0 {
			t.Errorf("supervisors or VMMs left running: %v", p)
		}
	})
	w.c.ImportImage(t)
	return w
}

// ctr runs ctr with a deadline; stdin "" is no stdin (/dev/null).
func (w *world) ctr(d time.Duration, stdin string, args ...string) (string, string, int) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if stdin == "" {
		return w.c.Ctr(ctx, nil, args...)
	}
	return w.c.Ctr(ctx, strings.NewReader(stdin), args...)
}

func (w *world) mustCtr(d time.Duration, args ...string) string {
	w.t.Helper()
	out, errOut, code := w.ctr(d, "", args...)
	if code != 0 {
		w.t.Fatalf("ctr %s: exit %d\nstdout %q\nstderr %q", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// mvmctl runs mvmctl on the shim's mvm state.
func (w *world) mvmctl(args ...string) (string, int) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "mvmctl"), args...)
	cmd.Env = append(os.Environ(), "MVM_STATE_DIR="+w.state, "MVM_DATA_DIR="+w.data)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return so.String() + se.String(), ee.ExitCode()
	} else if err != nil {
		w.t.Fatalf("mvmctl %v: %v", args, err)
	}
	return so.String(), 0
}

// vmProcesses are the supervisors and VMMs of this test's mvm state.
func (w *world) vmProcesses() []int {
	return ctrtest.Processes(func(cmdline string) bool { return strings.Contains(cmdline, w.state) })
}

// sandboxes is what `mvmctl ls -a --json` lists.
func (w *world) sandboxes() []map[string]any {
	w.t.Helper()
	out, code := w.mvmctl("ls", "-a", "--json")
	if code != 0 {
		w.t.Fatalf("mvmctl ls: exit %d: %s", code, out)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		w.t.Fatalf("mvmctl ls --json: %v: %s", err, out)
	}
	return rows
}

// assertNothingLeft checks that no VM, supervisor, sandbox state or mount
// of the test remains.
func (w *world) assertNothingLeft(what string) {
	w.t.Helper()
	waitFor(w.t, what+": no supervisor or VMM left", time.Minute, func() bool { return len(w.vmProcesses()) == 0 })
	// The sandbox directory goes last, and after a shim died it is the
	// `delete` containerd runs once it has noticed that removes it: a
	// VM already gone does not mean the cleanup is over.
	testenv.Poll(time.Minute, 50*time.Millisecond, func() bool { return len(w.sandboxes()) == 0 })
	if rows := w.sandboxes(); len(rows) != 0 {
		filepath.Walk(w.state, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() && fi.Size() < 20000 {
				b, _ := os.ReadFile(p)
				w.t.Logf("left in the state directory: %s (modified %s):\n%s", p, fi.ModTime().Format("15:04:05.000"), b)
			}
			return nil
		})
		w.t.Errorf("%s: sandboxes left: %v", what, rows)
	}
	waitFor(w.t, what+": no mount left", 30*time.Second, func() bool { return len(w.c.Mounts()) == 0 })
	waitFor(w.t, what+": no shim left", 30*time.Second, func() bool { return len(w.c.Shims()) == 0 })
}

// taskStatus is a task's STATUS column in `ctr task ls`, "" if not listed.
func (w *world) taskStatus(id string) string {
	out, _, _ := w.ctr(time.Minute, "", "task", "ls")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

// waitReady waits until the task's process has set its traps (it touches
// /tmp/ready), asking with task exec.
func (w *world) waitReady(id string) {
	w.t.Helper()
	n := 0
	waitFor(w.t, "task "+id+" ready", 2*time.Minute, func() bool {
		n++
		_, _, code := w.ctr(time.Minute, "", "task", "exec", "--exec-id", fmt.Sprintf("ready%d", n), id, "test", "-e", "/tmp/ready")
		return code == 0
	})
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, d, 100*time.Millisecond, cond, testenv.Msg("%s", what))
}

func run(id string, argv ...string) []string {
	return append([]string{"run", "--rm", "--runtime", ctrtest.Runtime, ctrtest.Image, id}, argv...)
}

func detached(id string, extra []string, argv ...string) []string {
	args := append([]string{"run", "-d", "--runtime", ctrtest.Runtime}, extra...)
	return append(append(args, ctrtest.Image, id), argv...)
}

const bootDeadline = 4 * time.Minute

// TestShimRun: ctr run prints the process's output and exits with its
// code; a failing process's code and stderr come through; piped stdin
// reaches the process byte for byte; each run is admitted, audited and
// leaves a receipt; nothing is left afterwards.
func TestShimRun(t *testing.T) {
	w := newWorld(t)
	out, errOut, code := w.ctr(bootDeadline, "", run("echo1", "echo", "hi")...)
	if code != 0 || out != "hi\n" {
		t.Fatalf("ctr run echo hi: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = w.ctr(bootDeadline, "", run("fail1", "sh", "-c", "echo oops >&2; exit 7")...)
	if code != 7 || out != "" || !strings.Contains(errOut, "oops") {
		t.Fatalf("ctr run exit 7: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// Binary-safe stdin and stdout: NUL, 0xff, no trailing newline.
	payload := "line one\n\x00\xff\xfe binary \r\n tail"
	out, errOut, code = w.ctr(bootDeadline, payload, run("cat1", "cat")...)
	if code != 0 || out != payload {
		t.Fatalf("ctr run cat with stdin: exit %d, stdout %q (want %q), stderr %q", code, out, payload, errOut)
	}
	w.assertNothingLeft("after ctr run --rm")

	// Evidence: three plans admitted, three runs finished, receipts kept
	// and verifiable.
	tail, code := w.mvmctl("audit", "tail", "-n", "100", "--json")
	if code != 0 {
		t.Fatalf("audit tail: %s", tail)
	}
	if n := strings.Count(tail, `"kind":"plan.admitted"`); n != 3 {
		t.Errorf("audit: %d plan.admitted entries, want 3:\n%s", n, tail)
	}
	if n := strings.Count(tail, `"kind":"exec.finished"`); n != 3 {
		t.Errorf("audit: %d exec.finished entries, want 3:\n%s", n, tail)
	}
	if strings.Contains(tail, "oops") || strings.Contains(tail, "binary") {
		t.Errorf("audit holds data-plane bytes:\n%s", tail)
	}
	receipts, _ := filepath.Glob(filepath.Join(w.data, "receipts", "*.json"))
	if len(receipts) != 3 {
		t.Fatalf("receipts kept: %v, want 3", receipts)
	}
	if out, code := w.mvmctl("receipt", "verify", "--audit", receipts[0]); code != 0 {
		t.Errorf("receipt verify %s: exit %d: %s", receipts[0], code, out)
	}
	if out, code := w.mvmctl("audit", "verify"); code != 0 {
		t.Errorf("audit verify: exit %d: %s", code, out)
	}
}

// TestShimTask: a detached task listed by mvmctl with its containerd
// names; task exec runs a second process in the same VM; task ps and task
// metrics; kill with SIGTERM, and with SIGKILL when TERM is ignored; task
// rm leaves no VM, supervisor or mount.
func TestShimTask(t *testing.T) {
	w := newWorld(t)
	// A bind mount of a host directory (as the CRI's /etc/hosts): host
	// paths are not shared into the guest, the mount is left out.
	hostDir := t.TempDir()
	os.WriteFile(filepath.Join(hostDir, "hostfile"), []byte("host"), 0o644)
	w.mustCtr(bootDeadline, detached("long", []string{"--mount", "type=bind,src=" + hostDir + ",dst=/hostdir,options=rbind:ro"},
		"sh", "-c", "trap 'exit 3' TERM; touch /tmp/ready; while :; do sleep 1; done")...)
	w.waitReady("long")

	// An exec is in the task's container: its PID namespace (PID 1 is
	// the task's process, ps shows no process of the VM's: no agent, no
	// kernel thread), its root (the agent's is out of reach), the spec's
	// mounts, masked and read-only paths (containerd's defaults). Seen
	// failing on the chroot-only agent.
	ps := w.mustCtr(2*time.Minute, "task", "exec", "--exec-id", "ps", "long", "ps")
	inside := w.mustCtr(2*time.Minute, "task", "exec", "--exec-id", "inside", "long", "sh", "-c", `echo "CMD1 $(cat /proc/1/cmdline)"
test -e /proc/1/root/init && echo AGENT"-ROOT-REACHABLE"
test -e /hostdir/hostfile && echo HOST"-BIND-VISIBLE"
echo "MASKED[$(head -c 10 /proc/timer_list)]"
echo 1 2>&1 > /proc/sys/kernel/ns_last_pid
cat /proc/self/mountinfo`)
	for _, want := range []string{"CMD1 sh-ctrap 'exit 3' TERM", "MASKED[]", "Read-only file system",
		" /proc rw,nosuid,nodev,noexec", " /sys ro,nosuid,nodev,noexec", " /dev/mqueue rw,nosuid,nodev,noexec", " /dev/shm rw,nosuid,nodev,noexec", " /run rw,nosuid"} {
		if !strings.Contains(inside, want) {
			t.Errorf("in the container: output lacks %q:\n%s", want, inside)
		}
	}
	for _, bad := range []string{"AGENT-ROOT-REACHABLE", "HOST-BIND-VISIBLE", "/run/mvm"} {
		if strings.Contains(inside, bad) {
			t.Errorf("in the container: output has %q:\n%s", bad, inside)
		}
	}
	// ps: the task's process (PID 1), its sleep, ps itself; nothing else.
	for _, line := range strings.Split(strings.TrimSpace(ps), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 3 || (f[0] == "1") != strings.Contains(line, "trap 'exit 3'") || !(strings.Contains(line, "trap") || f[2] == "sleep" || f[2] == "ps") {
			t.Errorf("ps in the container: %q is not one of its processes (PID 1 the task's):\n%s", line, ps)
		}
	}

	rows := w.sandboxes()
	if len(rows) != 1 {
		t.Fatalf("mvmctl ls: %v", rows)
	}
	labels, _ := rows[0]["labels"].(map[string]any)
	if labels["io.containerd.namespace"] != "mvmtest" || labels["io.containerd.id"] != "long" || labels["io.mvm.owner"] != "containerd-shim-mvm-v2" {
		t.Errorf("mvmctl ls labels = %v, want the containerd namespace, id and the shim as owner", rows[0]["labels"])
	}
	if rows[0]["run_profile"] != "restrictive" {
		t.Errorf("run profile = %v, want restrictive (the default)", rows[0]["run_profile"])
	}
	if text, _ := w.mvmctl("ls"); !strings.Contains(text, "io.containerd.id=long") {
		t.Errorf("mvmctl ls does not name the owner:\n%s", text)
	}

	out := w.mustCtr(2*time.Minute, "task", "exec", "--exec-id", "second", "long", "sh", "-c", "echo second; cat /proc/1/comm >/dev/null")
	if out != "second\n" {
		t.Errorf("task exec: stdout %q", out)
	}
	// The spec's capabilities apply: containerd's default set
	// (CHOWN, DAC_OVERRIDE, FSETID, FOWNER, MKNOD, NET_RAW, SETGID, SETUID,
	// SETFCAP, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, KILL, AUDIT_WRITE),
	// not all of root's.
	if out := w.mustCtr(2*time.Minute, "task", "exec", "--exec-id", "caps", "long", "sh", "-c", "grep CapEff /proc/self/status"); !strings.Contains(out, "00000000a80425fb") {
		t.Errorf("effective capabilities of an exec: %q, want containerd's default set 00000000a80425fb", out)
	}
	_, errOut, code := w.ctr(2*time.Minute, "", "task", "exec", "--exec-id", "third", "long", "sh", "-c", "exit 5")
	if code != 5 {
		t.Errorf("task exec exit 5: exit %d, stderr %q", code, errOut)
	}

	// A background exec shows in task ps beside the task's own process.
	w.mustCtr(time.Minute, "task", "exec", "-d", "--exec-id", "bg", "long", "sleep", "600")
	waitFor(t, "task ps lists two processes", time.Minute, func() bool {
		out, _, _ := w.ctr(time.Minute, "", "task", "ps", "long")
		return strings.Contains(out, "bg") && len(strings.Split(strings.TrimSpace(out), "\n")) >= 3
	})

	metrics := w.mustCtr(time.Minute, "task", "metrics", "long")
	for _, want := range []string{"pids.current", "memory.usage", "memory.usage_limit"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("task metrics lacks %s:\n%s", want, metrics)
		}
	}

	// Pause freezes the VM; resume lets it run.
	w.mustCtr(time.Minute, "task", "pause", "long")
	if st := w.taskStatus("long"); st != "PAUSED" {
		t.Errorf("after task pause the task is %q", st)
	}
	if _, errOut, code := w.ctr(time.Minute, "", "task", "kill", "-s", "SIGTERM", "long"); code == 0 || !strings.Contains(errOut, "paused") {
		t.Errorf("SIGTERM to a paused task: exit %d, stderr %q", code, errOut)
	}
	w.mustCtr(time.Minute, "task", "resume", "long")
	if st := w.taskStatus("long"); st != "RUNNING" {
		t.Errorf("after task resume the task is %q", st)
	}

	w.mustCtr(time.Minute, "task", "kill", "-s", "SIGTERM", "long")
	waitFor(t, "task long stopped after SIGTERM", time.Minute, func() bool { return w.taskStatus("long") == "STOPPED" })
	// The trap ran: the task's own exit code (ctr task rm warns of it).
	if _, errOut, code := w.ctr(time.Minute, "", "task", "rm", "long"); code != 0 || !strings.Contains(errOut, "exit code 3") {
		t.Errorf("task rm long: exit %d, stderr %q; want a warning naming exit code 3", code, errOut)
	}
	w.mustCtr(time.Minute, "container", "rm", "long")
	w.assertNothingLeft("after task rm")

	// SIGTERM ignored: SIGKILL ends it, with 128+9.
	w.mustCtr(bootDeadline, detached("stubborn", nil, "sh", "-c", "trap '' TERM; touch /tmp/ready; while :; do sleep 1; done")...)
	w.waitReady("stubborn")
	w.mustCtr(time.Minute, "task", "kill", "-s", "SIGTERM", "stubborn")
	if st := w.taskStatus("stubborn"); st != "RUNNING" {
		t.Errorf("after an ignored SIGTERM the task is %s", st)
	}
	w.mustCtr(time.Minute, "task", "kill", "-s", "SIGKILL", "--all", "stubborn")
	waitFor(t, "task stubborn stopped after SIGKILL", time.Minute, func() bool { return w.taskStatus("stubborn") == "STOPPED" })
	if _, errOut, code := w.ctr(time.Minute, "", "task", "rm", "stubborn"); code != 0 || !strings.Contains(errOut, "exit code 137") {
		t.Errorf("task rm stubborn: exit %d, stderr %q; want a warning naming exit code 137", code, errOut)
	}
	w.mustCtr(time.Minute, "container", "rm", "stubborn")
	w.assertNothingLeft("after SIGKILL and task rm")
}

// TestShimTerminal: ctr run -t and ctr task exec -t give the process a
// terminal of the client's size; a terminal under the default
// (restrictive) profile is refused before anything boots.
func TestShimTerminal(t *testing.T) {
	w := newWorld(t)
	_, errOut, code := w.ctr(time.Minute, "", "run", "--rm", "-t", "--runtime", ctrtest.Runtime, ctrtest.Image, "tty0", "tty")
	if code == 0 {
		t.Fatalf("ctr run -t under the restrictive profile succeeded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootDeadline)
	defer cancel()
	cmd := w.c.CtrCommand(ctx, "run", "--rm", "-t", "--annotation", "io.mvm.profile=dev", "--runtime", ctrtest.Runtime,
		ctrtest.Image, "tty1", "sh", "-c", "tty; stty size; echo done")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 33, Cols: 101})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	var buf bytes.Buffer
	io.Copy(&buf, ptmx) // until the client exits (EIO)
	werr := cmd.Wait()
	out := strings.ReplaceAll(buf.String(), "\r", "")
	if werr != nil || !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "33 101") || !strings.Contains(out, "done") {
		t.Fatalf("ctr run -t: %v; output %q (stderr of the refused run: %q)", werr, out, errOut)
	}

	// task exec -t: a second process with its own terminal, of the
	// client's size, in a running task.
	w.mustCtr(bootDeadline, detached("tty2", []string{"--annotation", "io.mvm.profile=dev"}, "sleep", "600")...)
	ectx, ecancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer ecancel()
	ecmd := w.c.CtrCommand(ectx, "task", "exec", "-t", "--exec-id", "term", "tty2", "sh", "-c", "tty; stty size; echo done")
	eptmx, err := pty.StartWithSize(ecmd, &pty.Winsize{Rows: 21, Cols: 77})
	if err != nil {
		t.Fatal(err)
	}
	defer eptmx.Close()
	buf.Reset()
	io.Copy(&buf, eptmx)
	werr = ecmd.Wait()
	out = strings.ReplaceAll(buf.String(), "\r", "")
	if werr != nil || !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "21 77") || !strings.Contains(out, "done") {
		t.Errorf("ctr task exec -t: %v; output %q", werr, out)
	}
	w.mustCtr(time.Minute, "task", "kill", "-s", "SIGKILL", "tty2")
	waitFor(t, "task tty2 stopped", time.Minute, func() bool { return w.taskStatus("tty2") == "STOPPED" })
	w.mustCtr(time.Minute, "task", "rm", "tty2")
	w.mustCtr(time.Minute, "container", "rm", "tty2")
	w.assertNothingLeft("after ctr run -t and task exec -t")
}

// TestShimConcurrent: ten containers at once, each with its own VM.
func TestShimConcurrent(t *testing.T) {
	w := newWorld(t)
	const n = 10
	var wg sync.WaitGroup
	errs := make([]string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := fmt.Sprintf("many%d", i)
			args := []string{"run", "--rm", "--memory-limit", "268435456", "--runtime", ctrtest.Runtime, ctrtest.Image, id, "echo", id}
			out, errOut, code := w.ctr(10*time.Minute, "", args...)
			if code != 0 || out != id+"\n" {
				errs[i] = fmt.Sprintf("%s: exit %d, stdout %q, stderr %q", id, code, out, errOut)
			}
		}(i)
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Error(e)
		}
	}
	w.assertNothingLeft("after ten concurrent runs")
}

// TestShimKilledShim: when the shim dies (SIGKILL), containerd sees the
// task exit, its `delete` cleans up, and no VM, supervisor or mount is
// left.
func TestShimKilledShim(t *testing.T) {
	w := newWorld(t)
	w.mustCtr(bootDeadline, detached("victim", nil, "sleep", "600")...)
	waitFor(t, "task victim running", time.Minute, func() bool { return w.taskStatus("victim") == "RUNNING" })
	if len(w.vmProcesses()) == 0 || len(w.c.Mounts()) == 0 {
		t.Fatalf("no VM (%v) or no rootfs mount (%v) while the task runs", w.vmProcesses(), w.c.Mounts())
	}
	shims := w.c.Shims()
	if len(shims) != 1 {
		t.Fatalf("shim processes: %v", shims)
	}
	syscall.Kill(shims[0], syscall.SIGKILL)
	waitFor(t, "containerd to see the task exit", 2*time.Minute, func() bool {
		st := w.taskStatus("victim")
		return st == "STOPPED" || st == ""
	})
	w.assertNothingLeft("after the shim was killed")
	w.ctr(time.Minute, "", "task", "rm", "victim")
	w.mustCtr(time.Minute, "container", "rm", "victim")
}

// TestShimContainerdConfig: the CRI snippet as shipped
// (deploy/kubernetes/containerd-mvm.toml) is read by containerd's CRI
// plugin as the runtime "mvm" of type io.containerd.mvm.v2, with the
// io.mvm.* annotations passed through.
func TestShimContainerdConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\n%s", filepath.Join(dir, "root"), filepath.Join(dir, "state"), ctrtest.RuntimeSnippet(t))
	os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "containerd", "--config", filepath.Join(dir, "config.toml"), "config", "dump").CombinedOutput()
	if err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, out)
	}
	s := string(out)
	i := strings.Index(s, `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.mvm]`)
	if i < 0 {
		t.Fatalf("the CRI plugin has no runtime mvm:\n%s", s)
	}
	section := s[i:]
	if j := strings.Index(section[1:], "\n    ["); j > 0 {
		section = section[:j+1]
	}
	for _, want := range []string{`runtime_type = "io.containerd.mvm.v2"`, `pod_annotations = ["io.mvm.*"]`, `container_annotations = ["io.mvm.*"]`} {
		if !strings.Contains(section, want) {
			t.Errorf("runtime mvm lacks %s:\n%s", want, section)
		}
	}
}
