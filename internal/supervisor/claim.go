package supervisor

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"golang.org/x/sys/unix"
)

// claim makes a pooled sandbox its claimer's: the runtime has admitted the
// claimer's plan and rewritten the spec (name, TTL, transient); the
// supervisor takes them over. A transient claimer hands over the read end
// of its hold pipe with the request: the sandbox then dies with it, as a
// sandbox booted for it would.
// took reports that the hold pipe is now the supervisor's.
func (s *supervisor) claim(ctx context.Context, files []*os.File) (resp sandbox.Response, took bool) {
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
	if err := s.afterClaim(ctx); err != nil {
		return sandbox.Response{Error: "claim: " + err.Error()}, took
	}
	s.save()
	s.events("sandbox.claimed", s.snapshot(), map[string]any{"pool": spec.Start.Pool})
	return sandbox.Response{OK: true, State: s.snapshot()}, took
}

// afterClaim gives the claimed guest its own identity: its hostname from
// the claimer's name, fresh entropy, clock and machine-id.
func (s *supervisor) afterClaim(ctx context.Context) error {
	return s.refreshIdentity(ctx)
}

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
