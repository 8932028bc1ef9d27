package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/mvm-sandbox/mvm/internal/agentapi"
)

// The agent channel after a save. On Firecracker a snapshot resets the
// vsock device: the connection the supervisor's session runs on is
// closed, and the guest drops its end once it runs again (its listener
// stays). The machine that was saved keeps running, so the supervisor
// dials a new connection once the guest continues, runs the handshake a
// fresh connection needs (agentapi.HostHandshake, then Hello) and swaps
// session and client under s.mu. Agent connections that arrive meanwhile
// wait for the new channel (awaitChannel); streams that were open on the
// old one end with it. QEMU's virtio-serial channel survives a save:
// its machine does not report a reset and nothing here runs for it.

// channelResetter is a machine whose state save resets the agent channel
// (firecracker.Machine.SaveResetsChannel).
type channelResetter interface {
	SaveResetsChannel() bool
}

// reconnectTimeout bounds a reconnect: dial, handshake and Hello with a
// guest that was running a moment ago. A variable for tests.
var reconnectTimeout = 30 * time.Second

// errChannelLost is a reconnect that failed: the sandbox cannot reach its
// agent any more and is ended failed (failChannel).
var errChannelLost = errors.New("the sandbox's agent channel did not come back after the save")

// agent returns the current channel: its session and the supervisor's
// own client on it.
func (s *supervisor) agent() (*yamux.Session, *agentapi.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.session, s.client
}

// awaitChannel returns the session to open agent streams on, waiting
// while a save has reset the channel and the new one is not up yet.
func (s *supervisor) awaitChannel() (*yamux.Session, error) {
	s.mu.Lock()
	gate := s.chanGate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-s.finished:
			return nil, errors.New("the sandbox stopped")
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.chanErr != nil {
		return nil, s.chanErr
	}
	return s.session, nil
}

// channelWillReset is called before a state save: on a machine whose save
// resets the channel it holds new agent streams back until
// reconnectAgent has run. A save that fails half way may have reset the
// channel too, so the reconnect follows any save attempt.
func (s *supervisor) channelWillReset() {
	r, ok := s.vm.(channelResetter)
	if !ok || !r.SaveResetsChannel() {
		return
	}
	s.mu.Lock()
	if s.chanGate == nil {
		s.chanGate = make(chan struct{})
	}
	s.mu.Unlock()
}

// reconnectAgent replaces a channel that a save reset, once the guest
// runs again (under opMu; nothing to do when no save reset it). An error
// wraps errChannelLost: the caller ends the sandbox failed.
func (s *supervisor) reconnectAgent() error {
	s.mu.Lock()
	gate := s.chanGate
	s.mu.Unlock()
	if gate == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), reconnectTimeout)
	defer cancel()
	sess, client, err := s.dialAgent(ctx, agentapi.HostHandshake, nil)
	s.mu.Lock()
	oldSess, oldClient := s.session, s.client
	if err == nil {
		s.session, s.client = sess, client
	} else {
		err = fmt.Errorf("%w (firecracker resets vsock connections on a snapshot, and a new connection to the agent failed: %v)", errChannelLost, err)
		s.chanErr = err
	}
	s.chanGate = nil
	s.mu.Unlock()
	close(gate)
	if err != nil {
		s.logf("%v", err)
		return err
	}
	if oldClient != nil {
		oldClient.Close()
	}
	if oldSess != nil {
		oldSess.Close()
	}
	s.logf("agent channel reconnected after a save (agent %s)", truncate(client.Hello.AgentVersion, 64))
	return nil
}

// agentDialError is a failed step of dialAgent: step names it in the
// error ("handshake"; "" for Hello, whose error says so), what as a boot
// failure says it ("the guest agent").
type agentDialError struct {
	step, what string
	err        error
}

func (e *agentDialError) Error() string {
	if e.step == "" {
		return e.err.Error()
	}
	return e.step + ": " + e.err.Error()
}
func (e *agentDialError) Unwrap() error { return e.err }

// dialAgent opens a channel to a running agent, at boot and after a save
// reset the old one: a connection, the channel handshake (handshake:
// agentapi.HostHandshake, or resetAgent for a guest restored inside the
// session it was saved in), a session and a client that has said Hello.
// opened (when not nil) runs once the handshake is done.
func (s *supervisor) dialAgent(ctx context.Context, handshake func(context.Context, net.Conn) error, opened func()) (*yamux.Session, *agentapi.Client, error) {
	conn, err := s.vm.DialChannel(ctx)
	if err != nil {
		return nil, nil, &agentDialError{"connect", "the agent channel", err}
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	err = handshake(ctx, conn)
	if !stop() || err != nil {
		conn.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, nil, &agentDialError{"handshake", "the guest agent", err}
	}
	if opened != nil {
		opened()
	}
	sess, err := agentapi.HostSession(conn, io.Discard)
	if err != nil {
		conn.Close()
		return nil, nil, &agentDialError{"session", "the agent session", err}
	}
	client, err := agentapi.Dial(ctx, func(context.Context) (net.Conn, error) { return sess.Open() })
	if err != nil {
		sess.Close()
		return nil, nil, &agentDialError{"", "agent hello", err}
	}
	return sess, client, nil
}

// failChannel ends a sandbox whose channel was lost: failed, with err as
// the reason, its VMM killed. answer gets the requester's error message
// once the failed state is written, before the supervisor exits.
func (s *supervisor) failChannel(err error, answer func(msg string)) {
	done := make(chan struct{})
	s.mu.Lock()
	transient, name := s.spec.Transient, s.spec.Name
	s.mu.Unlock()
	msg := fmt.Sprintf("%v; the sandbox is failed and its VM stopped (`mvmctl down %s` removes it)", err, name)
	var once sync.Once
	ack := func() { once.Do(func() { answer(msg) }) }
	req := stopRequest{reason: msg, failed: true, phase: "snapshot", remove: transient, ack: ack, done: done}
	select {
	case s.stopCh <- req:
		select {
		case <-done:
		case <-s.finished:
		}
	case <-s.finished:
	}
	ack() // when another stop came first, the requester still gets the error
}

// alsoLost adds a lost channel (reconnectAgent's error) to the error of a
// save that failed; err alone when the channel is fine.
func alsoLost(err, lost error) error {
	if lost == nil {
		return err
	}
	return errors.Join(err, lost)
}
