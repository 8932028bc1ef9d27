package runtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/sandbox/sandboxtest"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// shortLockWait makes lifecycle operations give up on a busy sandbox
// quickly for the test.
func shortLockWait(t *testing.T, d time.Duration) {
	old := lifecycleLockWait
	lifecycleLockWait = d
	t.Cleanup(func() { lifecycleLockWait = old })
}

// controlStandIn answers the control socket of the sandbox in dir as a
// supervisor would, and records the requests it gets. A "suspend" blocks
// until release is closed, then commits a paused state as the real one
// does, answers, and ends the stand-in supervisor process.
type controlStandIn struct {
	mu       sync.Mutex
	ops      []string
	suspends chan struct{} // one value per suspend received
	release  chan struct{}
}

func startControlStandIn(t *testing.T, dir string, pid int) *controlStandIn {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(dir, sandbox.ControlSocket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f := &controlStandIn{suspends: make(chan struct{}, 8), release: make(chan struct{})}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.serve(t, c, dir, pid)
		}
	}()
	return f
}

func (f *controlStandIn) serve(t *testing.T, c net.Conn, dir string, pid int) {
	defer c.Close()
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return
	}
	var req sandbox.Request
	json.Unmarshal(line, &req)
	f.mu.Lock()
	f.ops = append(f.ops, req.Op)
	f.mu.Unlock()
	resp := sandbox.Response{OK: true}
	if req.Op == "suspend" && len(f.received()) > 1 {
		resp = sandbox.Response{Error: "a save is in progress"} // only the first one is served
	} else if req.Op == "suspend" {
		f.suspends <- struct{}{}
		<-f.release
		p, err := (&snapshot.Store{Dir: dir}).Begin(sandbox.SuspendedDir)
		if err == nil {
			os.WriteFile(filepath.Join(p.Dir, snapshot.MemoryFile), []byte("state"), 0o600)
			_, err = p.Commit(snapshot.Meta{}, evidence.GenerateSigner("host:test"))
		}
		if err != nil {
			resp = sandbox.Response{Error: err.Error()}
		} else {
			st, _ := sandbox.ReadState(dir)
			st.Status, st.Reason, st.Suspended, st.SupervisorPID = sandbox.Paused, "paused to disk", true, 0
			sandbox.WriteJSON(filepath.Join(dir, sandbox.StateFile), st)
		}
		defer syscall.Kill(-pid, syscall.SIGKILL) // the supervisor exits once paused
	}
	b, _ := json.Marshal(resp)
	c.Write(append(b, '\n'))
}

func (f *controlStandIn) received() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ops...)
}

// TestLifecycleOpsWaitForPause: while a pause to disk is in progress, a
// resume, a snapshot save, a second pause (to disk or in memory) and a
// down of the same sandbox do not reach its supervisor: each waits for the
// pause and, when it takes too long, fails busy, naming the pause. (Before
// the lifecycle lock, the resume sent the supervisor a "resume" in the
// middle of the pause, which continued a guest whose memory was already
// saved, and the down stopped the sandbox and removed its directory under
// the pause.) Once the pause is done, down removes the paused sandbox.
func TestLifecycleOpsWaitForPause(t *testing.T) {
	shortLockWait(t, 300*time.Millisecond)
	r := testRuntime(t)
	id := sandboxtest.Make(t, r.Layout.Root, "s", sandboxtest.Options{Status: sandbox.Running, Supervisor: SupervisorCommand})
	dir := r.Layout.Dir(id)
	st, err := sandbox.ReadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	pid := st.SupervisorPID
	fake := startControlStandIn(t, dir, pid)
	ctx := context.Background()

	type result struct {
		st  *sandbox.State
		err error
	}
	paused := make(chan result, 1)
	go func() {
		st, err := r.Pause(ctx, "s", PauseOptions{})
		paused <- result{st, err}
	}()
	select {
	case <-fake.suspends:
	case res := <-paused:
		t.Fatalf("pause returned before the supervisor saved: %v %v", res.st, res.err)
	case <-time.After(time.Minute):
		t.Fatal("the pause did not reach the supervisor")
	}

	busy := func(what string, err error) {
		t.Helper()
		if errdefs.KindOf(err) != errdefs.KindBusy || !strings.Contains(err.Error(), "sandbox s is busy: a pause (pid ") || !strings.Contains(err.Error(), "retry") {
			t.Errorf("%s during a pause to disk: want a busy error naming the pause, got %v (kind %s)", what, err, errdefs.KindOf(err))
		}
	}
	_, err = r.Resume(ctx, "s")
	busy("resume", err)
	_, err = r.SaveSnapshot(ctx, "s", "t")
	busy("snapshot save", err)
	_, err = r.Pause(ctx, "s", PauseOptions{})
	busy("pause", err)
	_, err = r.Pause(ctx, "s", PauseOptions{InMemory: true})
	busy("pause --in-memory", err)
	busy("down", r.Down(ctx, "s"))
	if ops := fake.received(); len(ops) != 1 || ops[0] != "suspend" {
		t.Errorf("the supervisor got %v during its pause to disk; want only the suspend", ops)
	}
	if _, err := os.Stat(filepath.Join(dir, sandbox.StateFile)); err != nil {
		t.Fatalf("the sandbox was removed under its pause: %v", err)
	}

	close(fake.release)
	res := <-paused
	if res.err != nil || res.st.Status != sandbox.Paused || !res.st.Suspended {
		t.Fatalf("pause: %v %v", res.st, res.err)
	}
	if err := r.Down(ctx, "s"); err != nil {
		t.Fatalf("down of the paused sandbox: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("down left %s: %v", dir, err)
	}
}

// lockHolderEnv makes the test binary a process that takes the lifecycle
// lock of the directory it names, says so, and waits to be killed.
const lockHolderEnv = "MVM_TEST_HOLD_LIFECYCLE_LOCK"

func TestMain(m *testing.M) {
	if dir := os.Getenv(lockHolderEnv); dir != "" {
		if _, err := lockLifecycle(context.Background(), dir, "s", "resume"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("held")
		select {}
	}
	os.Exit(m.Run())
}

// TestLifecycleLockReleasedOnKill: a process that holds the lock makes
// others fail busy with its operation and pid; SIGKILLed, it holds
// nothing, and the next operation takes the lock at once.
func TestLifecycleLockReleasedOnKill(t *testing.T) {
	shortLockWait(t, 200*time.Millisecond)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lockHolderEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "held\n" {
		t.Fatalf("lock holder: %q %v", line, err)
	}
	_, err = lockLifecycle(context.Background(), dir, "s", "pause")
	want := fmt.Sprintf("sandbox s is busy: a resume (pid %d) is in progress", cmd.Process.Pid)
	if errdefs.KindOf(err) != errdefs.KindBusy || err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("lock held by another process: want %q (busy), got %v", want, err)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	unlock, err := lockLifecycle(context.Background(), dir, "s", "pause")
	if err != nil {
		t.Fatalf("lock after its holder was killed: %v", err)
	}
	unlock()
}

// TestLifecycleLockWaits: an operation waits for the one before it (no
// error when it ends in time), gives up with the caller's context, and
// finds a sandbox removed by the one it waited for (a down) not found.
func TestLifecycleLockWaits(t *testing.T) {
	shortLockWait(t, time.Minute)
	dir := filepath.Join(t.TempDir(), "sb")
	os.Mkdir(dir, 0o700)
	ctx := context.Background()
	unlock, err := lockLifecycle(ctx, dir, "s", "down")
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = lockLifecycle(cctx, dir, "s", "resume")
	cancel()
	if errdefs.KindOf(err) != errdefs.KindCanceled || !strings.Contains(err.Error(), "a removal (down)") {
		t.Fatalf("cancelled wait: %v (kind %s)", err, errdefs.KindOf(err))
	}
	waited := make(chan error, 1)
	go func() {
		u, err := lockLifecycle(ctx, dir, "s", "resume")
		if u != nil {
			u()
		}
		waited <- err
	}()
	// The down removes the sandbox, then lets go.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	unlock()
	if err := <-waited; !errors.Is(err, ErrNotFound) {
		t.Fatalf("resume waiting for a down that removed the sandbox: %v", err)
	}

	// in time: no error
	os.Mkdir(dir, 0o700)
	unlock, err = lockLifecycle(ctx, dir, "s", "pause")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		u, err := lockLifecycle(ctx, dir, "s", "resume")
		if u != nil {
			u()
		}
		waited <- err
	}()
	unlock()
	if err := <-waited; err != nil {
		t.Fatalf("resume after a pause that ended: %v", err)
	}
}

// TestStateAfterHostReboot: after a host reboot no mvm process runs, the
// sockets a sandbox's processes listened on are left in its directory,
// and the pids its state records may belong to unrelated processes: here
// its supervisor pid is another sandbox's supervisor (pid reuse) and its
// VMM pid a plain process. A sandbox paused to disk is paused, and down
// removes it without signalling either process; one that was running
// when the host went down is failed, not running. (Before the supervisor
// identity check, any process with the supervisor command in its command
// line passed for this sandbox's supervisor: the running one was still
// shown running, and down killed the other sandbox's supervisor.)
func TestStateAfterHostReboot(t *testing.T) {
	r := testRuntime(t)
	other := sandboxtest.Supervisor(t, SupervisorCommand, filepath.Join(t.TempDir(), "sb", sandbox.NewID()))
	plain := sandboxtest.Supervisor(t, "unrelated")
	rebooted := func(name, status string, suspended bool) string {
		t.Helper()
		id := sandboxtest.Make(t, r.Layout.Root, name, sandboxtest.Options{Status: status})
		dir := r.Layout.Dir(id)
		if suspended {
			p, err := (&snapshot.Store{Dir: dir}).Begin(sandbox.SuspendedDir)
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(p.Dir, snapshot.MemoryFile), []byte("state"), 0o600)
			if _, err := p.Commit(snapshot.Meta{}, evidence.GenerateSigner("host:test")); err != nil {
				t.Fatal(err)
			}
		}
		st, _ := sandbox.ReadState(dir)
		st.Suspended, st.SupervisorPID, st.VMMPID = suspended, other, plain
		sandbox.WriteJSON(filepath.Join(dir, sandbox.StateFile), st)
		for _, s := range []string{sandbox.ControlSocket, sandbox.AgentSocket} {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, s), Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			l.SetUnlinkOnClose(false) // left behind, as by a process that died
			l.Close()
		}
		return dir
	}
	paused := rebooted("p", sandbox.Paused, true)
	rebooted("r", sandbox.Running, false)

	st, err := r.Get("p")
	if err != nil || st.Status != sandbox.Paused || !st.Suspended || st.SupervisorPID != 0 {
		t.Fatalf("paused to disk, after a reboot: %+v %v", st, err)
	}
	st, err = r.Get("r")
	if err != nil || st.Status != sandbox.Failed || !strings.Contains(st.Reason, "died") {
		t.Fatalf("running when the host went down: %+v %v", st, err)
	}
	for _, name := range []string{"p", "r"} {
		if err := r.Down(context.Background(), name); err != nil {
			t.Fatalf("down %s: %v", name, err)
		}
	}
	if _, err := os.Stat(paused); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("down left %s: %v", paused, err)
	}
	for _, pid := range []int{other, plain} {
		if !sandbox.ProcessAlive(pid, "") {
			t.Fatalf("down signalled pid %d, which is not the sandbox's", pid)
		}
	}
}
