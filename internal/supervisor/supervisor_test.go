package supervisor

// Unit tests of the supervisor's boot, TTL and hold pipe, with a fake
// machine whose agent channel is a socketpair served by a fake agent
// (the real handshake, yamux and gRPC; no VM). Real microVMs are the
// e2e suite's job.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"google.golang.org/grpc"
)

// fakeAgent answers Hello, Readiness and Shutdown (which powers the fake
// VM off, as the real agent does).
type fakeAgent struct {
	pb.UnimplementedAgentServer
	vm *fakeVM
}

func (a *fakeAgent) Hello(context.Context, *pb.HelloRequest) (*pb.HelloResponse, error) {
	a.vm.hellos.Add(1)
	a.vm.mu.Lock()
	a.vm.order = append(a.vm.order, "hello")
	if a.vm.helloSeen != nil {
		select {
		case a.vm.helloSeen <- struct{}{}:
		default:
		}
	}
	a.vm.mu.Unlock()
	return &pb.HelloResponse{ProtocolVersion: agentapi.ProtocolVersion, MinProtocolVersion: agentapi.MinProtocolVersion,
		AgentVersion: "test", Profile: "dev", KernelRelease: "6.1.0-fake", Capabilities: []string{"exec", agentapi.CapRestored}}, nil
}

// Restored records the call and answers what the test's hook says.
func (a *fakeAgent) Restored(_ context.Context, req *pb.RestoredRequest) (*pb.RestoredResponse, error) {
	a.vm.mu.Lock()
	hook := a.vm.restoredHook
	a.vm.mu.Unlock()
	if hook != nil {
		if err := hook(req); err != nil {
			return nil, err
		}
	}
	a.vm.record("restored:" + req.Hostname)
	a.vm.mu.Lock()
	a.vm.order = append(a.vm.order, "restored:"+req.Hostname)
	a.vm.mu.Unlock()
	return &pb.RestoredResponse{HostnameFile: true}, nil
}

func (a *fakeAgent) Readiness(context.Context, *pb.ReadinessRequest) (*pb.ReadinessReport, error) {
	return &pb.ReadinessReport{Profile: "dev", Boot: &pb.BootTimings{AgentStartedMs: 11, RootMountedMs: 22, ChannelBoundMs: 33},
		Components: []*pb.Component{{Name: "rootfs", State: "ready"}}}, nil
}

// Exec runs nothing: it answers started, echoes argv[1:] on stdout and
// exits 0.
func (a *fakeAgent) Exec(stream pb.Agent_ExecServer) error {
	in, err := stream.Recv()
	if err != nil {
		return err
	}
	start := in.GetStart()
	if start == nil || len(start.Argv) == 0 {
		return errors.New("exec: no start")
	}
	for _, m := range []*pb.ExecOutput{
		{Msg: &pb.ExecOutput_Started{Started: &pb.Started{Pid: 42}}},
		{Msg: &pb.ExecOutput_Stdout{Stdout: []byte(strings.Join(start.Argv[1:], " ") + "\n")}},
		{Msg: &pb.ExecOutput_Exit{Exit: &pb.Exit{}}},
	} {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	return nil
}

func (a *fakeAgent) Shutdown(context.Context, *pb.ShutdownRequest) (*pb.ShutdownResponse, error) {
	a.vm.record("agent-shutdown")
	go a.vm.exit(nil)
	return &pb.ShutdownResponse{}, nil
}

// fakeVM is a backend machine without a VM.
type fakeVM struct {
	dir       string
	guest     string // "ok", "silent" (never handshakes), "dies" (exits during boot)
	done      chan struct{}
	once      sync.Once
	mu        sync.Mutex
	exitErr   error
	calls     []string
	guestEnd  net.Conn
	hellos    atomic.Int32  // Hello calls the fake agent answered
	order     []string      // Hello and Restored calls, in order
	helloSeen chan struct{} // when set, told of every Hello
	// restoredHook, when set, runs in the fake agent's Restored.
	restoredHook func(*pb.RestoredRequest) error
}

func (v *fakeVM) record(c string) { v.mu.Lock(); v.calls = append(v.calls, c); v.mu.Unlock() }
func (v *fakeVM) called() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.calls...)
}
func (v *fakeVM) exit(err error) {
	v.once.Do(func() {
		v.mu.Lock()
		v.exitErr = err
		v.mu.Unlock()
		if g := v.guestConn(); g != nil {
			g.Close()
		}
		close(v.done)
	})
}

func (v *fakeVM) Pid() int            { return os.Getpid() }
func (v *fakeVM) Accel() string       { return "tcg" }
func (v *fakeVM) ConsolePath() string { return filepath.Join(v.dir, "console.log") }
func (v *fakeVM) Done() <-chan struct{} {
	return v.done
}
func (v *fakeVM) ExitErr() error { v.mu.Lock(); defer v.mu.Unlock(); return v.exitErr }
func (v *fakeVM) Pause(context.Context) error {
	v.record("pause")
	return nil
}
func (v *fakeVM) Resume(context.Context) error { v.record("resume"); return nil }
func (v *fakeVM) Kill() error                  { v.record("kill"); v.exit(errors.New("killed")); return nil }
func (v *fakeVM) Stop(context.Context) error   { v.record("stop"); v.exit(nil); return nil }
func (v *fakeVM) HostFwdAdd(context.Context, backend.HostFwd) error {
	return errors.New("no network")
}

// guestConn is the guest's end of the last channel dialed.
func (v *fakeVM) guestConn() net.Conn {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.guestEnd
}

// setGuest changes how the guest answers the next dial.
func (v *fakeVM) setGuest(g string) { v.mu.Lock(); v.guest = g; v.mu.Unlock() }

func (v *fakeVM) DialChannel(ctx context.Context) (net.Conn, error) {
	v.mu.Lock()
	mode := v.guest
	v.mu.Unlock()
	switch mode {
	case "dies":
		go v.exit(errors.New("qemu exit status 1: guest crashed"))
		<-v.done
		return nil, errors.New("connect channel.sock: vmm exited")
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "ch")
		defer f.Close()
		c, _ := net.FileConn(f)
		return c
	}
	host, guest := conn(fds[0]), conn(fds[1])
	v.mu.Lock()
	v.guestEnd = guest
	v.mu.Unlock()
	if mode == "silent" {
		return host, nil // the guest never says hello
	}
	go func() {
		if err := agentapi.GuestHandshake(context.Background(), guest); err != nil {
			return
		}
		sess, err := agentapi.GuestSession(guest, io.Discard)
		if err != nil {
			return
		}
		gs := grpc.NewServer()
		pb.RegisterAgentServer(gs, &fakeAgent{vm: v})
		gs.Serve(sess)
	}()
	return host, nil
}

// harness runs one supervisor on a fake VM in a fresh state directory.
type harness struct {
	t       *testing.T
	dir     string
	vm      *fakeVM
	ready   Ready
	done    chan error
	mu      sync.Mutex
	events  []string // kind:reason
	hold    *os.File // write end of the hold pipe (transient sandboxes)
	readyR  *os.File
	gotSpec backend.Spec // what the supervisor asked the backend for
}

// startSupervisor starts a supervisor and reads its ready line.
func startSupervisor(t *testing.T, guest string, mutate func(*sandbox.Spec)) *harness {
	t.Helper()
	h := startSupervisorAsync(t, guest, mutate)
	h.ready = h.readReady()
	if h.ready.OK && (h.gotSpec.Dir != "." || h.gotSpec.Name != sandbox.VMMTag("0123456789ab") || !strings.Contains(h.gotSpec.Cmdline, "mvm.hostname=box")) {
		t.Errorf("VM spec: %+v", h.gotSpec)
	}
	return h
}

func (h *harness) readReady() Ready {
	h.t.Helper()
	var r Ready
	line, err := bufio.NewReader(h.readyR).ReadBytes('\n')
	if err != nil {
		h.t.Fatalf("ready pipe: %v", err)
	}
	if err := json.Unmarshal(line, &r); err != nil {
		h.t.Fatalf("ready line %q: %v", line, err)
	}
	return r
}

// startSupervisorAsync runs supervisor.Run on a fake VM without waiting
// for its ready line.
func startSupervisorAsync(t *testing.T, guest string, mutate func(*sandbox.Spec)) *harness {
	t.Helper()
	return startSupervisorOpts(t, guest, mutate, harnessOpts{})
}

// harnessOpts: wrap, when set, is the machine the supervisor gets for the
// fake VM (one that saves, say); signer, when set, signs its snapshots.
type harnessOpts struct {
	wrap   func(*fakeVM) vmm
	signer *evidence.Signer
}

// startSupervisorOpts is startSupervisorAsync with options.
func startSupervisorOpts(t *testing.T, guest string, mutate func(*sandbox.Spec), o harnessOpts) *harness {
	t.Helper()
	t.Chdir(t.TempDir()) // Run changes directory; restore it afterwards
	root := t.TempDir()
	dir := filepath.Join(root, "sandboxes", "0123456789ab")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := sandbox.Spec{ID: "0123456789ab", Name: "box", BootTimeout: 10 * time.Second, Created: time.Now().UTC(),
		VM: backend.Spec{CPUs: 1, MemoryMiB: 128}, Image: sandbox.ImageRef{Name: "minimal"}}
	if mutate != nil {
		mutate(&spec)
	}
	// The supervisor boots from the admitted plan (signed, named by hash).
	signer := evidence.GenerateSigner("host:test")
	sp, err := plan.Prepare(plan.Input{SandboxID: spec.ID, SandboxName: spec.Name,
		ImageDigest: "sha256:" + strings.Repeat("a", 64), KernelDigest: "sha256:" + strings.Repeat("b", 64),
		Resources: plan.Resources{CPUs: spec.VM.CPUs, MemoryMiB: spec.VM.MemoryMiB}, RunProfile: plan.Dev, ConsoleIfAllowed: true}, signer, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := plan.Store(sp, filepath.Join(dir, sandbox.PlanFile)); err != nil {
		t.Fatal(err)
	}
	if spec.PlanHash == "" {
		spec.PlanHash, _ = sp.Hash()
	}
	if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.SpecFile), spec); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "console.log"), []byte("Linux version 6.1.0-fake\nlast console line\n"), 0o600)
	h := &harness{t: t, dir: dir, vm: &fakeVM{dir: dir, guest: guest, done: make(chan struct{})}, done: make(chan error, 1)}
	oldStart, oldHold := startVMM, holdPipe
	startVMM = func(ctx context.Context, _ string, s backend.Spec) (vmm, error) {
		h.gotSpec = s
		if o.wrap != nil {
			return o.wrap(h.vm), nil
		}
		return h.vm, nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	h.hold = w
	holdPipe = func() *os.File { return r }
	t.Cleanup(func() {
		startVMM, holdPipe = oldStart, oldHold
		w.Close()
		h.vm.exit(nil)
		select {
		case <-h.done:
		case <-time.After(30 * time.Second):
			t.Error("supervisor did not return")
		}
	})
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	events := func(kind string, st *sandbox.State, fields map[string]any) {
		h.mu.Lock()
		defer h.mu.Unlock()
		reason, _ := fields["reason"].(string)
		h.events = append(h.events, kind+":"+reason)
	}
	h.readyR = pr
	go func() {
		h.done <- RunWith(dir, pw, Options{Events: events, TrustedKey: signer.Public, RequireKey: true, Signer: o.signer})
	}()
	return h
}

func (h *harness) wait() error {
	h.t.Helper()
	select {
	case err := <-h.done:
		h.done <- err // for Cleanup
		return err
	case <-time.After(30 * time.Second):
		h.t.Fatal("supervisor did not return")
		return nil
	}
}

func (h *harness) sawEvent(e string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, x := range h.events {
		if x == e {
			return true
		}
	}
	return false
}

func TestBootReportsReadyAndServes(t *testing.T) {
	h := startSupervisor(t, "ok", nil)
	if !h.ready.OK || h.ready.State == nil {
		t.Fatalf("ready: %+v", h.ready)
	}
	st := h.ready.State
	if st.Status != sandbox.Running || st.VMMPID != os.Getpid() || st.Boot.Accel != "tcg" || st.Image.ImageProfile != "dev" {
		t.Errorf("state: %+v", st)
	}
	if st.Boot.Guest["root_mounted"] != 22 || st.Boot.Components["rootfs"] != "ready" || st.Boot.AgentInfo["kernel"] != "6.1.0-fake" {
		t.Errorf("boot report: %+v", st.Boot)
	}
	if !h.sawEvent("sandbox.started:") {
		t.Errorf("events %v", h.events)
	}
	// The control socket answers status and pause/resume, and an agent
	// connection reaches the guest agent through the supervisor.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r, err := sandbox.Control(ctx, h.dir, sandbox.Request{Op: "pause"}); err != nil || !r.OK || r.State.Status != sandbox.Paused {
		t.Fatalf("pause: %+v %v", r, err)
	}
	if r, err := sandbox.Control(ctx, h.dir, sandbox.Request{Op: "resume"}); err != nil || !r.OK || r.State.Status != sandbox.Running {
		t.Fatalf("resume: %+v %v", r, err)
	}
	if r, err := sandbox.Control(ctx, h.dir, sandbox.Request{Op: "bogus"}); err != nil || r.OK || !strings.Contains(r.Error, "unknown op") {
		t.Fatalf("bogus op: %+v %v", r, err)
	}
	c, err := agentapi.Dial(ctx, func(ctx context.Context) (net.Conn, error) { return sandbox.DialIn(ctx, h.dir, sandbox.AgentSocket) })
	if err != nil {
		t.Fatal(err)
	}
	if c.Hello.AgentVersion != "test" {
		t.Errorf("hello through the supervisor: %+v", c.Hello)
	}
	c.Close()
	// stop removes the sandbox
	if r, err := sandbox.Control(ctx, h.dir, sandbox.Request{Op: "stop"}); err != nil || !r.OK {
		t.Fatalf("stop: %+v %v", r, err)
	}
	if err := h.wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h.dir); !os.IsNotExist(err) {
		t.Fatalf("sandbox directory left behind: %v", err)
	}
	if got := h.vm.called(); strings.Join(got, ",") != "pause,resume,kill" {
		t.Errorf("VM calls %v", got)
	}
	if !h.sawEvent("sandbox.stopped:requested") {
		t.Errorf("events %v", h.events)
	}
}

func TestBootFailsWhenTheVMDies(t *testing.T) {
	h := startSupervisor(t, "dies", nil)
	if h.ready.OK || !strings.Contains(h.ready.Error, "vm stopped during boot") || !strings.Contains(h.ready.Error, "guest crashed") ||
		!strings.Contains(h.ready.Error, "last console line") {
		t.Fatalf("ready: %+v", h.ready)
	}
	if err := h.wait(); err == nil {
		t.Fatal("Run returned no error")
	}
	st, err := sandbox.ReadState(h.dir)
	if err != nil || st.Status != sandbox.Failed {
		t.Fatalf("state %+v, %v", st, err)
	}
	if !h.sawEvent("sandbox.failed:") {
		t.Errorf("events %v", h.events)
	}
}

func TestBootTimesOutWithConsoleTail(t *testing.T) {
	h := startSupervisor(t, "silent", func(s *sandbox.Spec) { s.BootTimeout = 300 * time.Millisecond })
	if h.ready.OK || !strings.Contains(h.ready.Error, "boot timed out after 300ms waiting for the guest agent") ||
		!strings.Contains(h.ready.Error, "--- console log (last lines) ---") {
		t.Fatalf("ready: %+v", h.ready)
	}
	h.wait()
	if got := h.vm.called(); len(got) == 0 || got[len(got)-1] != "kill" {
		t.Fatalf("the VM was not killed after a failed boot: %v", got)
	}
}

// TestTTLStopsCleanlyAndKeepsTheSandbox: a sandbox that is not transient
// outlives its TTL as a stopped entry; the guest is asked to power off
// first (the agent's Shutdown), then the VMM is stopped.
func TestTTLStopsCleanlyAndKeepsTheSandbox(t *testing.T) {
	h := startSupervisor(t, "ok", func(s *sandbox.Spec) { s.TTL = 200 * time.Millisecond })
	if !h.ready.OK || h.ready.State.Expires == nil {
		t.Fatalf("ready: %+v", h.ready)
	}
	if err := h.wait(); err != nil {
		t.Fatal(err)
	}
	st, err := sandbox.ReadState(h.dir)
	if err != nil || st.Status != sandbox.Stopped || st.Reason != "ttl" {
		t.Fatalf("state %+v, %v", st, err)
	}
	got := h.vm.called()
	if len(got) < 1 || got[0] != "agent-shutdown" {
		t.Fatalf("VM calls %v: the guest was not asked to power off first", got)
	}
	if !h.sawEvent("sandbox.stopped:ttl") {
		t.Errorf("events %v", h.events)
	}
	for _, s := range []string{sandbox.AgentSocket, sandbox.ControlSocket} {
		if _, err := sandbox.DialIn(context.Background(), h.dir, s); err == nil {
			t.Errorf("%s still answers after the TTL", s)
		}
	}
}

// TestHoldPipeEOFTearsDown: a transient sandbox lives as long as its
// holder keeps the hold pipe open; EOF (the holder finished or died)
// kills the VM and removes the sandbox.
func TestHoldPipeEOFTearsDown(t *testing.T) {
	h := startSupervisor(t, "ok", func(s *sandbox.Spec) { s.Transient = true })
	if !h.ready.OK {
		t.Fatalf("ready: %+v", h.ready)
	}
	select {
	case err := <-h.done:
		t.Fatalf("supervisor returned while the holder is alive: %v", err)
	default:
	}
	h.hold.Close()
	if err := h.wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h.dir); !os.IsNotExist(err) {
		t.Fatalf("sandbox directory left behind: %v", err)
	}
	if got := h.vm.called(); strings.Join(got, ",") != "kill" {
		t.Errorf("VM calls %v", got)
	}
	if !h.sawEvent("sandbox.stopped:holder_gone") {
		t.Errorf("events %v", h.events)
	}
}

// TestHoldPipeEOFDuringBoot: a holder that goes away while the VM boots
// ends the boot at once rather than at its deadline.
func TestHoldPipeEOFDuringBoot(t *testing.T) {
	h := startSupervisorAsync(t, "silent", func(s *sandbox.Spec) { s.Transient = true; s.BootTimeout = time.Hour })
	h.hold.Close()
	ready := h.readReady()
	if ready.OK || ready.Error == "" || strings.Contains(ready.Error, "timed out") {
		t.Fatalf("ready: %+v", ready)
	}
	h.wait()
}

// TestControlRequestBounded: a control request is one line of at most
// 64 KiB; a longer one gets no answer and the connection is closed, and
// the supervisor keeps serving.
func TestControlRequestBounded(t *testing.T) {
	h := startSupervisor(t, "ok", nil)
	if !h.ready.OK {
		t.Fatalf("ready: %+v", h.ready)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := sandbox.DialIn(ctx, h.dir, sandbox.ControlSocket)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go c.Write([]byte(`{"op":"status","reason":"` + strings.Repeat("x", 70<<10) + "\"}\n"))
	reply, _ := io.ReadAll(c)
	c.Close()
	if len(reply) != 0 {
		t.Fatalf("answered an oversized request: %.100q", reply)
	}
	if r, err := sandbox.Control(ctx, h.dir, sandbox.Request{Op: "status"}); err != nil || !r.OK {
		t.Fatalf("status after an oversized request: %+v %v", r, err)
	}
}
