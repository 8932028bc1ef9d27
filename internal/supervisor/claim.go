package supervisor

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"golang.org/x/sys/unix"
)

// claimIdentityTimeout bounds a claim's identity refresh (an RPC into a
// guest that answered a moment ago).
var claimIdentityTimeout = 30 * time.Second

// claim makes a pooled sandbox its claimer's: the runtime has admitted the
// claimer's plan and rewritten the spec (name, TTL, transient); the
// supervisor takes them over. A transient claimer hands over the read end
// of its hold pipe with the request: the sandbox then dies with it, as a
// sandbox booted for it would.
//
// The guest's new identity (hostname from the claimer's name, fresh
// entropy, clock, machine-id) is sent after the claim is answered, so that
// the guest's work overlaps with the claimer's: until it has finished, no
// agent connection is proxied and no operation reaches the guest
// (awaitIdentity), so the claimer's first command runs in a guest that is
// already its own. A refresh that fails ends the sandbox failed.
// took reports that the hold pipe is now the supervisor's.
func (s *supervisor) claim(timings *sandbox.ClaimReport, refill *sandbox.Refill, files []*os.File) (resp sandbox.Response, took bool) {
	t0 := time.Now()
	var spec sandbox.Spec
	if err := sandbox.ReadJSON(filepath.Join(s.dir, sandbox.SpecFile), &spec); err != nil {
		return sandbox.Response{Error: "claim: read spec: " + err.Error()}, false
	}
	if spec.Transient && len(files) != 1 {
		return sandbox.Response{Error: "claim: a transient claim needs its hold pipe"}, false
	}
	s.mu.Lock()
	s.spec.Name, s.spec.Transient, s.spec.TTL, s.spec.Env = spec.Name, spec.Transient, spec.TTL, spec.Env
	s.spec.PlanHash, s.spec.RunProfile, s.spec.Start, s.spec.Created = spec.PlanHash, spec.RunProfile, spec.Start, spec.Created
	s.state.Name, s.state.Transient = spec.Name, spec.Transient
	s.state.Boot.Pool = spec.Start.Pool
	s.state.Created = spec.Created
	rep := sandbox.ClaimReport{}
	if timings != nil {
		rep.AdmitMS = timings.AdmitMS
	}
	s.state.Boot.Claim = &rep
	gate := make(chan struct{})
	s.identity, s.identityErr = gate, nil
	s.refill = refill
	s.state.Expires = nil
	s.ttl.Stop()
	if spec.TTL > 0 {
		exp := spec.Created.Add(spec.TTL)
		s.state.Expires = &exp
		s.ttl.Reset(time.Until(exp))
	}
	s.mu.Unlock()
	if spec.Transient {
		s.watchHolder(files[0])
		took = true
	}
	// The guest starts on its identity now; the state and the audit
	// entry are written meanwhile.
	sent := make(chan identityResult, 1)
	go func() { sent <- s.sendIdentity() }()
	s.save()
	s.events("sandbox.claimed", s.snapshot(), map[string]any{"pool": spec.Start.Pool})
	s.setClaimReport(func(c *sandbox.ClaimReport) { c.HandoverMS = msSince(t0) })
	resp = sandbox.Response{OK: true, State: s.snapshot()}
	go s.finishIdentity(gate, sent)
	return resp, took
}

type identityResult struct {
	rep    *agentapi.RestoreReport
	resume bool
	took   time.Duration
	err    error
}

// sendIdentity hands a claimed guest its new identity.
func (s *supervisor) sendIdentity() identityResult {
	ctx, cancel := context.WithTimeout(context.Background(), claimIdentityTimeout)
	defer cancel()
	t0 := time.Now()
	rep, resume, err := s.sendRefresh(ctx)
	return identityResult{rep: rep, resume: resume, took: time.Since(t0), err: err}
}

// finishIdentity records how a claim's identity refresh ended (after the
// claim's own audit entry) and opens the gate; a failed refresh ends the
// sandbox: a clone that could not be made unique is not used.
func (s *supervisor) finishIdentity(gate chan struct{}, sent <-chan identityResult) {
	res := <-sent
	s.setClaimReport(func(c *sandbox.ClaimReport) { c.IdentityMS = float64(res.took.Microseconds()) / 1000 })
	s.mu.Lock()
	if res.err != nil {
		s.identityErr = fmt.Errorf("claim: %w", res.err)
	}
	transient := s.spec.Transient
	s.mu.Unlock()
	s.refillAfterDelay()
	if res.err == nil {
		s.identityEvent(res.rep, res.resume)
		s.save()
		close(gate)
		return
	}
	close(gate)
	s.logf("claim: %v", res.err)
	select {
	case s.stopCh <- stopRequest{reason: "claim: the guest's identity could not be refreshed", failed: true, remove: transient}:
	case <-s.finished:
	}
}

// setClaimReport changes the claim's timings. The report is replaced, not
// changed in place: snapshots of the state share the pointer.
func (s *supervisor) setClaimReport(f func(*sandbox.ClaimReport)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var c sandbox.ClaimReport
	if s.state.Boot.Claim != nil {
		c = *s.state.Boot.Claim
	}
	f(&c)
	s.state.Boot.Claim = &c
}

// refillAfterDelay starts the refill a claim asked for once its delay has
// passed.
func (s *supervisor) refillAfterDelay() {
	s.mu.Lock()
	rf := s.refill
	s.mu.Unlock()
	if rf == nil {
		return
	}
	time.AfterFunc(time.Duration(rf.DelayMS)*time.Millisecond, s.startRefill)
}

// startRefill starts the refill a claim asked for, once.
func (s *supervisor) startRefill() {
	s.mu.Lock()
	rf := s.refill
	s.mu.Unlock()
	if rf == nil {
		return
	}
	s.refillOnce.Do(func() {
		if err := spawnRefill(rf); err != nil {
			s.logf("pool refill: %v", err)
		}
	})
}

// spawnRefill runs the supervisor's own executable with rf.Args in its
// own session, detached (it outlives the supervisor). A seam for tests.
var spawnRefill = func(rf *sandbox.Refill) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(rf.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(exe, rf.Args...)
	cmd.Dir = rf.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait()
	return nil
}

// awaitIdentity waits for a claim's identity refresh, if one is under
// way, and returns its error.
func (s *supervisor) awaitIdentity(ctx context.Context) error {
	s.mu.Lock()
	gate := s.identity
	s.mu.Unlock()
	if gate == nil {
		return nil
	}
	if identityWaitHook != nil {
		identityWaitHook()
	}
	select {
	case <-gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.identityErr
}

// identityWaitHook, when set (tests), is called by whatever starts to wait
// for a claim's identity refresh.
var identityWaitHook func()

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

// watchHolder ends the sandbox when f (the read end of a hold pipe)
// reaches EOF: its holder closed it or died.
func (s *supervisor) watchHolder(f io.Reader) {
	go func() {
		io.Copy(io.Discard, f)
		s.holderGoneMu.Do(func() { close(s.holderGone) })
	}()
}

// readWithFiles reads the first message of c with any descriptors sent
// along with it (SCM_RIGHTS), at most max bytes.
func readWithFiles(c net.Conn, max int) ([]byte, []*os.File) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, max)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil && n == 0 {
		return nil, nil
	}
	var files []*os.File
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			fds, err := unix.ParseUnixRights(&m)
			if err != nil {
				continue
			}
			for _, fd := range fds {
				files = append(files, os.NewFile(uintptr(fd), "hold"))
			}
		}
	}
	return buf[:n], files
}
