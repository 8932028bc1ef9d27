package supervisor

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// claimHarness makes h's sandbox a pooled one about to be claimed under
// the name "mine", with the fake agent's Restored blocked until release
// is closed (then failing with restoredErr, if set), and records the
// refills the supervisor starts.
type claimHarness struct {
	*harness
	release  chan struct{}
	waiting  chan struct{} // one value per caller that waits for the refresh
	refills  chan *sandbox.Refill
	failWith error
}

func newClaimHarness(t *testing.T, failWith error) *claimHarness {
	h := &claimHarness{harness: startSupervisor(t, "ok", nil), release: make(chan struct{}),
		waiting: make(chan struct{}, 8), refills: make(chan *sandbox.Refill, 4), failWith: failWith}
	if !h.ready.OK {
		t.Fatalf("ready: %+v", h.ready)
	}
	// Restored waits for the test, or for any Hello (which a working gate
	// holds back until Restored has returned): a connection let through
	// early shows up as a hello before the refresh.
	hello := make(chan struct{}, 1)
	h.vm.mu.Lock()
	h.vm.helloSeen = hello
	h.vm.restoredHook = func(*pb.RestoredRequest) error {
		select {
		case <-h.release:
		case <-hello:
		}
		return h.failWith
	}
	h.vm.mu.Unlock()
	oldSpawn, oldHook := spawnRefill, identityWaitHook
	spawnRefill = func(rf *sandbox.Refill) error { h.refills <- rf; return nil }
	identityWaitHook = func() { h.waiting <- struct{}{} }
	t.Cleanup(func() {
		select {
		case <-h.release:
		default:
			close(h.release)
		}
		h.vm.exit(nil)
		h.wait()
		spawnRefill, identityWaitHook = oldSpawn, oldHook
	})
	var spec sandbox.Spec
	if err := sandbox.ReadJSON(filepath.Join(h.dir, sandbox.SpecFile), &spec); err != nil {
		t.Fatal(err)
	}
	spec.Name, spec.Start.Pool = "mine", "pool1"
	if err := sandbox.WriteJSON(filepath.Join(h.dir, sandbox.SpecFile), spec); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *claimHarness) claim(ctx context.Context) *sandbox.Response {
	h.t.Helper()
	resp, err := sandbox.Control(ctx, h.dir, sandbox.Request{Op: "claim", Claim: &sandbox.ClaimReport{AdmitMS: 1.5},
		Refill: &sandbox.Refill{Args: []string{"fill", "pool1"}, DelayMS: 0}})
	if err != nil || !resp.OK {
		h.t.Fatalf("claim: %+v %v", resp, err)
	}
	return resp
}

func (h *claimHarness) restoredCalls() []string {
	var out []string
	for _, c := range h.vm.called() {
		if strings.HasPrefix(c, "restored:") {
			out = append(out, c)
		}
	}
	return out
}

func waitChan[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

// TestClaimAnswersBeforeIdentityButGatesTheAgent: a claim is answered while
// the guest's identity refresh is still under way (it overlaps with the
// claimer's next steps), but no agent connection reaches the guest, and
// no refill starts, before the refresh has finished: the claimer's first
// command runs in a guest that already has its new hostname.
func TestClaimAnswersBeforeIdentityButGatesTheAgent(t *testing.T) {
	h := newClaimHarness(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp := h.claim(ctx) // answered with Restored still blocked
	if resp.State.Name != "mine" || resp.State.Boot.Claim == nil || resp.State.Boot.Claim.AdmitMS != 1.5 {
		t.Fatalf("claimed state: %+v", resp.State)
	}
	hellos := h.vm.hellos.Load()
	h.vm.mu.Lock()
	before := len(h.vm.order)
	h.vm.mu.Unlock()
	dialed := make(chan error, 1)
	go func() {
		c, err := agentapi.Dial(ctx, func(ctx context.Context) (net.Conn, error) { return sandbox.DialIn(ctx, h.dir, sandbox.AgentSocket) })
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	// The connection is held at the gate; operations on the guest too.
	waitChan(t, h.waiting, "the agent connection to wait for the refresh")
	paused := make(chan *sandbox.Response, 1)
	go func() {
		r, _ := sandbox.Control(ctx, h.dir, sandbox.Request{Op: "pause"})
		paused <- r
	}()
	waitChan(t, h.waiting, "the pause to wait for the refresh")
	if n := h.vm.hellos.Load(); n != hellos {
		t.Fatalf("an agent connection reached the guest before its identity was refreshed (%d hellos, had %d)", n, hellos)
	}
	if got := h.restoredCalls(); len(got) != 0 {
		t.Fatalf("restored calls before release: %v", got)
	}
	select {
	case rf := <-h.refills:
		t.Fatalf("refill %+v started before the identity refresh finished", rf)
	default:
	}
	close(h.release)
	if err := waitChan(t, dialed, "the agent connection"); err != nil {
		t.Fatalf("agent connection after the refresh: %v", err)
	}
	if r := waitChan(t, paused, "the pause"); r == nil || !r.OK {
		t.Fatalf("pause after the refresh: %+v", r)
	}
	if got := h.restoredCalls(); strings.Join(got, ",") != "restored:mine" {
		t.Fatalf("restored calls: %v, want one with the claimer's name", got)
	}
	h.vm.mu.Lock()
	order := append([]string(nil), h.vm.order[before:]...)
	h.vm.mu.Unlock()
	if len(order) < 2 || order[0] != "restored:mine" || order[1] != "hello" {
		t.Fatalf("the guest saw %v after the claim, want the identity refresh before the claimer's hello", order)
	}
	if rf := waitChan(t, h.refills, "the refill"); strings.Join(rf.Args, " ") != "fill pool1" {
		t.Fatalf("refill: %+v", rf)
	}
	var st sandbox.State
	if err := sandbox.ReadJSON(filepath.Join(h.dir, sandbox.StateFile), &st); err != nil {
		t.Fatal(err)
	}
	if st.Boot.Claim == nil || st.Boot.Claim.AdmitMS != 1.5 || st.Boot.Claim.IdentityMS <= 0 || st.Boot.Pool != "pool1" {
		t.Fatalf("boot report after the claim: %+v", st.Boot)
	}
	if !h.sawEvent("sandbox.claimed:") || !h.sawEvent("sandbox.identity_refreshed:") {
		t.Fatalf("events: %v", h.events)
	}
}

// TestClaimIdentityFailureEndsSandbox: a claimed guest whose identity
// cannot be refreshed is never reached: the agent connection waiting for
// it is closed unproxied, the VM is killed and the sandbox ends failed
// (and the pool is still refilled).
func TestClaimIdentityFailureEndsSandbox(t *testing.T) {
	h := newClaimHarness(t, errdefs.Errorf(errdefs.KindGuest, "restored: set the hostname: boom"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h.claim(ctx)
	hellos := h.vm.hellos.Load()
	conn, err := sandbox.DialIn(ctx, h.dir, sandbox.AgentSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	waitChan(t, h.waiting, "the agent connection to wait for the refresh")
	close(h.release)
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := conn.Read(make([]byte, 64)); n != 0 || err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("agent connection after a failed refresh: read %d bytes, %v (want it closed)", n, err)
	}
	if err := h.wait(); err != nil {
		t.Fatal(err)
	}
	var st sandbox.State
	if err := sandbox.ReadJSON(filepath.Join(h.dir, sandbox.StateFile), &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != sandbox.Failed || !strings.Contains(st.Reason, "identity") {
		t.Fatalf("state after a failed refresh: %s %q", st.Status, st.Reason)
	}
	if got := h.vm.called(); len(got) == 0 || got[len(got)-1] != "kill" {
		t.Fatalf("VM calls %v, want a kill", got)
	}
	if n := h.vm.hellos.Load(); n != hellos {
		t.Fatalf("an agent connection reached the guest (%d hellos, had %d)", n, hellos)
	}
	if !h.sawEvent("sandbox.failed:") {
		t.Fatalf("events: %v", h.events)
	}
	waitChan(t, h.refills, "the refill")
}

// TestClaimRefillStartsWhenSandboxEndsFirst: the refill a claim asked for
// waits out its delay, but a sandbox that ends first (a `run` that is
// over, a `down`) starts it on its way out, so the pool is still topped
// up; it starts once.
func TestClaimRefillStartsWhenSandboxEndsFirst(t *testing.T) {
	h := newClaimHarness(t, nil)
	close(h.release)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := sandbox.Control(ctx, h.dir, sandbox.Request{Op: "claim",
		Refill: &sandbox.Refill{Args: []string{"fill", "pool1"}, DelayMS: time.Hour.Milliseconds()}})
	if err != nil || !resp.OK {
		t.Fatalf("claim: %+v %v", resp, err)
	}
	// Once the identity is refreshed the sandbox serves; then it stops.
	c, err := agentapi.Dial(ctx, func(ctx context.Context) (net.Conn, error) { return sandbox.DialIn(ctx, h.dir, sandbox.AgentSocket) })
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case rf := <-h.refills:
		t.Fatalf("refill %+v started before its delay, with the sandbox still running", rf)
	default:
	}
	if r, err := sandbox.Control(ctx, h.dir, sandbox.Request{Op: "stop"}); err != nil || !r.OK {
		t.Fatalf("stop: %+v %v", r, err)
	}
	if err := h.wait(); err != nil {
		t.Fatal(err)
	}
	if rf := waitChan(t, h.refills, "the refill at the sandbox's end"); strings.Join(rf.Args, " ") != "fill pool1" {
		t.Fatalf("refill: %+v", rf)
	}
	select {
	case rf := <-h.refills:
		t.Fatalf("a second refill: %+v", rf)
	default:
	}
}
