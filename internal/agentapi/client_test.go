package agentapi

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestDialDeadPeerFails: when the agent's socket has no listener (its
// supervisor was killed between the caller's liveness check and the
// dial), Dial returns an error instead of waiting for a peer that will
// never come back. It used to wait for as long as its context, and
// `mvmctl run` passes one without a deadline (TestSupervisorKillTakesVMDown
// hung in CI on this).
func TestDialDeadPeerFails(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false) // as a SIGKILLed supervisor leaves it
	l.Close()                 // the peer is gone; connecting is refused
	done := make(chan error, 1)
	go func() {
		c, err := Dial(context.Background(), func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		})
		if c != nil {
			c.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Dial succeeded without a peer")
		}
		t.Logf("Dial: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("Dial to a dead peer did not return within a minute")
	}
}
