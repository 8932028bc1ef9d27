// Package supervisor is the one small process that owns a running
// sandbox: the VMM child, the single agent channel, the console log, the
// TTL and the state file. It listens on two unix sockets in the sandbox
// directory: agent.sock, where every connection becomes one multiplexed
// stream to the guest agent, and ctl.sock, for lifecycle requests.
//
// mvmctl starts it by re-executing itself; there is no global daemon.
package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/termsafe"
)

// Ready is the one JSON line the supervisor writes to its ready pipe.
type Ready struct {
	OK    bool           `json:"ok"`
	Error string         `json:"error,omitempty"`
	State *sandbox.State `json:"state,omitempty"`
}

// Events receives lifecycle events for evidence; nil drops them.
type Events func(kind string, st *sandbox.State, fields map[string]any)

type supervisor struct {
	dir    string
	spec   sandbox.Spec
	events Events

	mu    sync.Mutex
	state sandbox.State

	vm vmm // backend.go
	// session and client are the agent channel (under mu: a save on a
	// backend that resets the channel replaces them, channel.go);
	// chanGate, when set, is closed once a new channel is up, chanErr why
	// none came.
	session  *yamux.Session
	client   *agentapi.Client
	chanGate chan struct{}
	chanErr  error

	stopCh   chan stopRequest
	finished chan struct{} // closed once the final state is written

	// holderGone is closed when the holder of a transient sandbox goes
	// away (the hold pipe at fd 4, or one handed over by a claim).
	holderGone   chan struct{}
	holderGoneMu sync.Once
	// ttl fires at the sandbox's expiry (stopped when it has none); a
	// claim resets it.
	ttl *time.Timer

	net *netState // network.go

	plan *plan.Plan // the admitted plan the sandbox boots from

	// identity, when set, is closed once a claim's identity refresh has
	// finished, identityErr how it ended (claim.go): agent connections
	// and operations on the guest wait for it.
	identity    chan struct{}
	identityErr error
	// refill is the pool refill a claim asked for, started once (claim.go).
	refill     *sandbox.Refill
	refillOnce sync.Once

	signer *evidence.Signer // signs snapshots; nil refuses them
	opMu   sync.Mutex       // one save, or in-memory pause or resume, at a time
	// suspending (under opMu) is set once a pause to disk has committed:
	// the VM is about to end, and nothing may continue or save it again.
	suspending bool
	vmSpec     backend.Spec // the machine as started
	bootStart  time.Time
}

func (s *supervisor) logf(format string, args ...any) { log.Printf(format, args...) }

type stopRequest struct {
	reason string
	remove bool // remove the sandbox directory afterwards
	// suspended: the sandbox was paused to disk; end the VMM and leave
	// the sandbox paused.
	suspended bool
	// failed: the sandbox ends failed (the VMM is killed), with reason;
	// phase names what failed in the audit entry ("claim" when empty).
	failed bool
	phase  string
	// ack, when set, answers the requester once the final state is
	// written (before the supervisor exits).
	ack  func()
	done chan struct{}
}

// Run is RunWith without a trusted key (the plan must still be the one
// the spec names).
func Run(dir string, ready io.WriteCloser, events Events) error {
	return RunWith(dir, ready, Options{Events: events})
}

// RunWith boots the sandbox admitted by dir/plan.json (dir/spec.json
// gives the paths of kernel, initrd and disks), reports readiness on
// ready, and serves until the sandbox stops. It returns when the VMM is
// gone and the state is final.
func RunWith(dir string, ready io.WriteCloser, o Options) error {
	events := o.Events
	if events == nil {
		events = func(string, *sandbox.State, map[string]any) {}
	}
	s := &supervisor{dir: dir, events: events, stopCh: make(chan stopRequest, 4), finished: make(chan struct{}), holderGone: make(chan struct{}), ttl: time.NewTimer(time.Hour), signer: o.Signer}
	s.ttl.Stop()
	defer close(s.finished)
	defer s.startRefill() // a refill still waiting starts when the sandbox ends
	if err := sandbox.ReadJSON(filepath.Join(dir, sandbox.SpecFile), &s.spec); err != nil {
		return reportFailure(ready, fmt.Errorf("read spec: %w", err))
	}
	p, err := s.loadPlan(o.TrustedKey, o.RequireKey)
	if err != nil {
		return reportFailure(ready, err)
	}
	s.plan = p
	// Sockets are created relative to the sandbox directory, which keeps
	// their paths short whatever MVM_STATE_DIR is.
	if err := os.Chdir(dir); err != nil {
		return reportFailure(ready, err)
	}
	s.state = sandbox.State{
		ID: s.spec.ID, Name: s.spec.Name, Status: sandbox.Starting, Transient: s.spec.Transient,
		Image: s.spec.Image, CPUs: p.Resources.CPUs, MemoryMiB: p.Resources.MemoryMiB,
		RunProfile: string(p.RunProfile), Backend: p.Backend,
		Created: s.spec.Created, SupervisorPID: os.Getpid(),
	}
	// The image profile is the artifact's, as admitted.
	s.state.Image.ImageProfile = p.ImageProfile
	s.state.Boot.Start, s.state.Boot.StartReason = s.spec.Start.Mode, s.spec.Start.Reason
	s.state.Boot.Snapshot, s.state.Boot.Pool = s.spec.Start.Snapshot, s.spec.Start.Pool
	if s.spec.TTL > 0 {
		exp := s.spec.Created.Add(s.spec.TTL)
		if !s.spec.TTLPaused {
			exp = exp.Add(s.spec.PausedFor)
		}
		s.state.Expires = &exp
	}
	s.save()

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	// A transient sandbox lives as long as its holder keeps the write end
	// of the hold pipe (fd 4) open: EOF means the holder finished or died.
	holderGone := s.holderGone
	if s.spec.Transient {
		s.watchHolder(holdPipe())
	}

	bootCtx, cancel := context.WithTimeout(context.Background(), s.spec.BootTimeout)
	err = s.boot(bootCtx, sigs, holderGone)
	cancel()
	if err != nil {
		if s.vm != nil {
			s.vm.Kill()
		}
		s.setStatus(sandbox.Failed, err.Error())
		s.events("sandbox.failed", s.snapshot(), map[string]any{"phase": "boot"})
		return reportFailure(ready, err)
	}
	// A supervisor of this sandbox killed before (during a resume or a
	// pause to disk) left its socket files; only one supervisor runs per
	// sandbox, so they are stale.
	os.Remove(sandbox.AgentSocket)
	os.Remove(sandbox.ControlSocket)
	agentL, err := net.Listen("unix", sandbox.AgentSocket)
	if err != nil {
		s.vm.Kill()
		return reportFailure(ready, err)
	}
	ctlL, err := net.Listen("unix", sandbox.ControlSocket)
	if err != nil {
		s.vm.Kill()
		return reportFailure(ready, err)
	}
	if s.resumesOwn() {
		killPoint("resume.running")
		if err := commitResume(s.dir); err != nil {
			s.vm.Kill()
			return reportFailure(ready, err)
		}
	}
	go s.serveAgent(agentL)
	go s.serveControl(ctlL)
	s.setStatus(sandbox.Running, "")
	s.events("sandbox.started", s.snapshot(), map[string]any{"accel": s.vm.Accel(), "boot_ms": s.state.Boot.AgentReadyMS})
	s.auditRestore()
	b, _ := json.Marshal(Ready{OK: true, State: s.snapshot()})
	ready.Write(append(b, '\n'))
	ready.Close()

	s.mu.Lock()
	if s.state.Expires != nil {
		s.ttl.Reset(time.Until(*s.state.Expires))
	}
	s.mu.Unlock()
	defer s.ttl.Stop()
	ttl := s.ttl.C
	var req stopRequest
	select {
	case <-s.vm.Done():
		agentL.Close()
		ctlL.Close()
		s.stopNetwork()
		if s.spec.Transient {
			s.finish(stopRequest{remove: true, reason: "vmm exited"})
			return nil
		}
		if s.vm.ExitErr() == nil {
			s.finish(stopRequest{reason: "guest powered off"})
			return nil
		}
		s.setStatus(sandbox.Failed, s.vm.ExitErr().Error())
		s.events("sandbox.failed", s.snapshot(), map[string]any{"phase": "run"})
		return nil
	case sig := <-sigs:
		req = stopRequest{reason: "signal " + sig.String(), remove: s.spec.Transient}
	case <-ttl:
		req = stopRequest{reason: "ttl", remove: s.spec.Transient}
	case <-holderGone:
		req = stopRequest{reason: "holder went away", remove: true}
	case req = <-s.stopCh:
	}
	agentL.Close()
	ctlL.Close()
	if req.suspended {
		// The state is on disk (SuspendedDir): nothing of the VM is kept.
		s.vm.Kill()
		if sess, _ := s.agent(); sess != nil {
			sess.Close()
		}
		s.stopNetwork()
		s.mu.Lock()
		s.state.Suspended = true
		s.state.VMMPID = 0
		s.state.SupervisorPID = 0
		s.mu.Unlock()
		s.setStatus(sandbox.Paused, "paused to disk")
		s.events("sandbox.paused", s.snapshot(), map[string]any{"to": "disk"})
		if req.ack != nil {
			req.ack()
		}
		close(req.done)
		return nil
	}
	s.shutdown(req.remove || req.failed)
	s.stopNetwork()
	s.finish(req)
	return nil
}

func reportFailure(ready io.WriteCloser, err error) error {
	b, _ := json.Marshal(Ready{OK: false, Error: err.Error()})
	ready.Write(append(b, '\n'))
	ready.Close()
	return err
}

// boot starts the VMM and waits for the agent.
func (s *supervisor) boot(ctx context.Context, sigs <-chan os.Signal, holderGone <-chan struct{}) error {
	t0 := time.Now()
	s.bootStart = t0
	spec := s.spec.VM
	spec.Dir = "."
	spec.Name = sandbox.VMMTag(s.spec.ID)
	// What the VM gets comes from the admitted plan.
	spec.CPUs, spec.MemoryMiB = s.plan.Resources.CPUs, s.plan.Resources.MemoryMiB
	spec.Network = nil
	spec.Cmdline = strings.TrimSpace(spec.Cmdline + " mvm.hostname=" + hostname(s.spec.Name) + " " + consoleArg(s.plan.Console))
	netCfg, err := s.planNetwork(s.plan)
	if err != nil {
		return err
	}
	if err := checkPlanMounts(spec, s.plan); err != nil {
		return err
	}
	if err := s.startNetwork(&spec, netCfg); err != nil {
		return err
	}
	consoleW, err := startConsoleLog(filepath.Join(s.dir, ConsoleLog), consoleLogMax())
	if err != nil {
		return err
	}
	spec.Console = consoleW
	s.vmSpec = spec
	vm, err := startVMM(ctx, s.plan.Backend, spec)
	consoleW.Close() // the VMM holds its own copy; EOF comes when it exits
	if err != nil {
		return err
	}
	s.vm = vm
	s.mu.Lock()
	s.state.VMMPID = vm.Pid()
	s.state.Boot.Accel = vm.Accel()
	s.state.Boot.VMMStartedMS = time.Since(t0).Milliseconds()
	s.mu.Unlock()
	s.save()

	// Give up on a signal as well as on the deadline.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-holderGone:
			cancel()
		case <-ctx.Done():
		}
	}()
	fail := func(what string, err error) error {
		if ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("boot timed out after %s waiting for %s%s", s.spec.BootTimeout, what, consoleTail(vm.ConsolePath()))
		}
		select {
		case <-vm.Done():
			return fmt.Errorf("vm stopped during boot (%v)%s", vm.ExitErr(), consoleTail(vm.ConsolePath()))
		default:
		}
		return fmt.Errorf("%s: %w%s", what, err, consoleTail(vm.ConsolePath()))
	}
	if s.state.Boot.Start == "" {
		s.state.Boot.Start = "cold"
	}
	if spec.Incoming != "" {
		s.state.Boot.Start = "restored"
		if err := s.restore(ctx); err != nil {
			return fail("the saved state", err)
		}
	}
	handshake := agentapi.HostHandshake
	if spec.Incoming != "" {
		handshake = resetAgent
	}
	sess, client, err := s.dialAgent(ctx, handshake, func() { s.state.Boot.ChannelOpenMS = time.Since(t0).Milliseconds() })
	if err != nil {
		var de *agentDialError
		if errors.As(err, &de) {
			return fail(de.what, de.err)
		}
		return fail("the agent channel", err)
	}
	s.mu.Lock()
	s.session, s.client = sess, client
	s.mu.Unlock()
	rep, err := client.Agent.Readiness(ctx, &pb.ReadinessRequest{})
	if err != nil {
		return fail("agent readiness", err)
	}
	if spec.Incoming != "" {
		// A restored guest is a copy of the saved one until it has its
		// own identity; nothing may reach it before.
		if err := s.refreshIdentity(ctx); err != nil {
			return fail("the restored guest's identity refresh", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := &s.state.Boot
	b.AgentReadyMS = time.Since(t0).Milliseconds()
	b.Guest = map[string]int64{
		"agent_started":  rep.Boot.GetAgentStartedMs(),
		"modules_loaded": rep.Boot.GetModulesLoadedMs(),
		"root_mounted":   rep.Boot.GetRootMountedMs(),
		"channel_bound":  rep.Boot.GetChannelBoundMs(),
		"first_request":  rep.Boot.GetFirstRequestMs(),
	}
	b.Components = map[string]string{"vmm": "ready", "channel": "ready"}
	for _, c := range rep.Components {
		b.Components[c.Name] = c.State
	}
	// What the agent says about itself is the guest's claim: shown as
	// such, never taken as the image profile (that is the artifact's).
	b.AgentInfo = map[string]string{
		"version": client.Hello.AgentVersion, "reported_profile": client.Hello.Profile,
		"kernel": client.Hello.KernelRelease, "capabilities": strings.Join(client.Hello.Capabilities, ","),
	}
	if got, want := client.Hello.Profile, s.plan.ImageProfile; got != want {
		log.Printf("guest agent reports image profile %q, the booted artifact's is %q; keeping %q", truncate(got, 64), want, want)
	}
	return nil
}

// consoleArg tells the agent whether the admitted plan allows a console.
func consoleArg(allowed bool) string {
	if allowed {
		return "mvm.console=1"
	}
	return "mvm.console=0"
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func hostname(name string) string {
	if name == "" {
		return "mvm"
	}
	return name
}

// consoleTail returns the end of the console log, for error messages,
// with the guest's control characters escaped.
func consoleTail(path string) string {
	b, err := readTail(path, 64<<10)
	if err != nil || len(strings.TrimSpace(string(b))) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(termsafe.Text(string(b)), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "\n--- console log (last lines) ---\n" + strings.Join(lines, "\n")
}

// readTail reads at most the last n bytes of path.
func readTail(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	return io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
}

// serveAgent proxies each connection to a new stream on the guest channel.
func (s *supervisor) serveAgent(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			// Nothing reaches a claimed guest before its new identity.
			if err := s.awaitIdentity(context.Background()); err != nil {
				return
			}
			sess, err := s.awaitChannel()
			if err != nil {
				return
			}
			stream, err := sess.Open()
			if err != nil {
				return
			}
			defer stream.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(stream, c); stream.Close(); done <- struct{}{} }()
			go func() { io.Copy(c, stream); c.Close(); done <- struct{}{} }()
			<-done
		}()
	}
}

func (s *supervisor) serveControl(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go s.handleControl(c)
	}
}

func (s *supervisor) handleControl(c net.Conn) {
	defer c.Close()
	// The first message may carry a descriptor (a claim's hold pipe).
	first, files := readWithFiles(c, 64<<10)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	r := bufio.NewReader(io.LimitReader(io.MultiReader(bytes.NewReader(first), c), 64<<10))
	line, err := r.ReadBytes('\n')
	if err != nil {
		return
	}
	var req sandbox.Request
	reply := func(resp sandbox.Response) {
		b, _ := json.Marshal(resp)
		c.Write(append(b, '\n'))
	}
	if err := json.Unmarshal(line, &req); err != nil {
		reply(sandbox.Response{Error: "bad request: " + err.Error()})
		return
	}
	// replyErr answers an error; one that lost the agent channel ends the
	// sandbox failed first (channel.go).
	replyErr := func(err error) {
		if errors.Is(err, errChannelLost) {
			s.failChannel(err, func(msg string) { reply(sandbox.Response{Error: msg}) })
			return
		}
		reply(sandbox.Response{Error: err.Error()})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch req.Op {
	case "status", "stop", "claim":
	default:
		// What acts on the guest waits for a claim's identity refresh.
		if err := s.awaitIdentity(ctx); err != nil {
			reply(sandbox.Response{Error: err.Error()})
			return
		}
	}
	switch req.Op {
	case "status":
		reply(sandbox.Response{OK: true, State: s.snapshot()})
	case "stop":
		done := make(chan struct{})
		reason := req.Reason
		if reason == "" {
			reason = "stopped by request"
		}
		select {
		case s.stopCh <- stopRequest{reason: reason, remove: true, done: done}:
			<-done
		case <-s.finished:
		}
		reply(sandbox.Response{OK: true})
	case "pause", "resume":
		// Not in the middle of a save: a continue during a pause to disk
		// would run the guest on after its memory was saved (the runtime's
		// lifecycle lock keeps its callers apart; this covers a caller
		// that was killed and let go of it while the save went on).
		s.opMu.Lock()
		var err error
		if s.suspending {
			err = errSuspending
		} else if req.Op == "pause" {
			err = s.vm.Pause(ctx)
		} else if err = s.vm.Resume(ctx); err == nil {
			// A save while it was stopped may have reset the channel.
			err = s.reconnectAgent()
		}
		s.opMu.Unlock()
		if err != nil {
			replyErr(err)
			return
		}
		if req.Op == "pause" {
			s.setStatus(sandbox.Paused, "")
		} else {
			s.setStatus(sandbox.Running, "")
		}
		reply(sandbox.Response{OK: true, State: s.snapshot()})
	case "forward":
		reply(s.forward(ctx, req.Publish))
	case "claim":
		resp, took := s.claim(req.Claim, req.Refill, files)
		if took {
			files = nil
		}
		reply(resp)
	case "snapshot":
		meta, err := s.saveSnapshot(req.Snapshot)
		if err != nil {
			replyErr(err)
			return
		}
		reply(sandbox.Response{OK: true, State: s.snapshot(), Snapshot: meta})
	case "suspend":
		meta, err := s.suspend()
		if err != nil {
			replyErr(err)
			return
		}
		done := make(chan struct{})
		ack := func() { reply(sandbox.Response{OK: true, State: s.snapshot(), Snapshot: meta}) }
		select {
		case s.stopCh <- stopRequest{suspended: true, reason: "paused to disk", ack: ack, done: done}:
			<-done
		case <-s.finished:
			reply(sandbox.Response{Error: "pause: the sandbox stopped meanwhile"})
		}
	default:
		reply(sandbox.Response{Error: fmt.Sprintf("unknown op %q", req.Op)})
	}
}

// shutdown makes sure the VMM is gone. A sandbox whose state is about to
// be removed is simply killed: nothing in it survives anyway, and a clean
// guest power-off costs a kernel shutdown under emulation. A sandbox that
// stays listed (stopped by its TTL, with its writable disk) is asked to
// power off cleanly first, so its filesystems are consistent.
func (s *supervisor) shutdown(discard bool) {
	defer func() {
		if sess, _ := s.agent(); sess != nil {
			sess.Close()
		}
	}()
	if discard {
		s.vm.Kill()
		return
	}
	if s.state.Status == sandbox.Paused {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s.vm.Resume(ctx)
		cancel()
	}
	if _, client := s.agent(); client != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := client.Agent.Shutdown(ctx, &pb.ShutdownRequest{})
		cancel()
		if err == nil {
			select {
			case <-s.vm.Done():
			case <-time.After(3 * time.Second):
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.vm.Stop(ctx)
}

// finish records the final state, or removes the sandbox, and answers
// whoever asked for the stop.
func (s *supervisor) finish(req stopRequest) {
	st := s.snapshot()
	if req.remove {
		s.events("sandbox.stopped", st, map[string]any{"reason": tag(req.reason)})
		l := sandbox.Layout{Root: filepath.Dir(filepath.Dir(s.dir))}
		l.Release(s.spec.Name, s.spec.ID)
		if err := os.RemoveAll(s.dir); err != nil {
			log.Printf("remove %s: %v", s.dir, err)
		}
	} else if req.failed {
		s.setStatus(sandbox.Failed, req.reason)
		phase := req.phase
		if phase == "" {
			phase = "claim"
		}
		s.events("sandbox.failed", s.snapshot(), map[string]any{"phase": phase})
	} else {
		s.setStatus(sandbox.Stopped, req.reason)
		s.events("sandbox.stopped", s.snapshot(), map[string]any{"reason": tag(req.reason)})
	}
	if req.ack != nil {
		req.ack()
	}
	if req.done != nil {
		close(req.done)
	}
	// Answer any other waiting stop requests too.
	for {
		select {
		case r := <-s.stopCh:
			if r.done != nil {
				close(r.done)
			}
		default:
			return
		}
	}
}

// tag reduces a reason to a policy tag (no free text in evidence).
func tag(reason string) string {
	switch {
	case reason == "ttl":
		return "ttl"
	case strings.HasPrefix(reason, "signal"):
		return "signal"
	case strings.HasPrefix(reason, "holder"):
		return "holder_gone"
	default:
		return "requested"
	}
}

func (s *supervisor) setStatus(status, reason string) {
	s.mu.Lock()
	s.state.Status = status
	s.state.Reason = reason
	s.mu.Unlock()
	s.save()
}

func (s *supervisor) snapshot() *sandbox.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state
	return &st
}

func (s *supervisor) save() {
	st := s.snapshot()
	st.Updated = time.Now().UTC()
	if err := sandbox.WriteJSON(filepath.Join(s.dir, sandbox.StateFile), st); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Printf("write state: %v", err)
	}
}
