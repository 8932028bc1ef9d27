package supervisor

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
)

// noClose keeps the guest's end of the channel open when its session
// closes it: in the guest the agent reopens the port.
type noClose struct{ net.Conn }

func (noClose) Close() error { return nil }

// fakeGuest is the agent's channel loop: handshake, a session whose
// streams echo, and a new handshake when the session ends.
func fakeGuest(t *testing.T, port net.Conn) {
	go func() {
		for {
			if err := agentapi.GuestHandshake(context.Background(), port); err != nil {
				return
			}
			sess, err := agentapi.GuestSession(noClose{port}, io.Discard)
			if err != nil {
				return
			}
			for {
				st, err := sess.Accept()
				if err != nil {
					break
				}
				go func() { io.Copy(st, st); st.Close() }()
			}
		}
	}()
}

// session runs a host session on conn and checks a stream echoes.
func echoes(t *testing.T, conn net.Conn) {
	t.Helper()
	sess, err := agentapi.HostSession(conn, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	st, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	st.SetDeadline(time.Now().Add(10 * time.Second))
	st.Write([]byte("ping"))
	b := make([]byte, 4)
	if _, err := io.ReadFull(st, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo %q %v", b, err)
	}
	st.Close()
}

// relay plays QEMU's chardev socket: the guest's port stays open while
// host connections come and go; bytes go to and from the current one.
type relay struct {
	g  net.Conn
	mu sync.Mutex
	// cur is the relay's end of the current host connection.
	cur net.Conn
}

func newRelay(g net.Conn) *relay {
	r := &relay{g: g}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := g.Read(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			c := r.cur
			r.mu.Unlock()
			if c != nil {
				c.Write(buf[:n]) // a gone host drops it
			}
		}
	}()
	return r
}

// connect replaces the host connection (the old one sees EOF).
func (r *relay) connect() net.Conn {
	a, b := net.Pipe()
	r.mu.Lock()
	old := r.cur
	r.cur = a
	r.mu.Unlock()
	if old != nil {
		old.Close()
	}
	go io.Copy(r.g, a)
	return b
}

// written counts the bytes written through a connection.
type written struct {
	net.Conn
	mu sync.Mutex
	n  int
}

func (w *written) Write(b []byte) (int, error) {
	n, err := w.Conn.Write(b)
	w.mu.Lock()
	w.n += n
	w.mu.Unlock()
	return n, err
}

func (w *written) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// TestResetAgentAfterRestore: a restored guest is still in the session it
// was saved in, with a host that no longer exists. resetAgent ends that
// session in band and handshakes again: at a frame boundary with the short
// burst; when the guest was saved in the middle of a frame (the old host had
// written a header and part of a body), with the long one. Which burst was
// sent is read from the bytes written, not from how long it took: the
// frame-boundary case gets a generous wait so that a starved test process
// cannot push it onto the long burst, and the mid-frame case a short one,
// since no wait lets the short burst end a frame.
func TestResetAgentAfterRestore(t *testing.T) {
	defer func(w time.Duration) { resetAgentWait = w }(resetAgentWait)
	for _, midFrame := range []bool{false, true} {
		resetAgentWait = time.Minute
		if midFrame {
			resetAgentWait = 200 * time.Millisecond
		}
		guest, port := net.Pipe()
		fakeGuest(t, port)
		r := newRelay(guest)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		host := r.connect()
		if err := agentapi.HostHandshake(ctx, host); err != nil {
			t.Fatal(err)
		}
		echoes(t, host)
		if midFrame {
			// A yamux data frame header for stream 1 announcing 1000
			// bytes, then 10 of them: the save catches the guest there.
			host.Write([]byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0x03, 0xe8})
			host.Write(make([]byte, 10))
		}
		// The restore: a new host on the same guest port.
		w := &written{Conn: r.connect()}
		if err := resetAgent(ctx, w); err != nil {
			t.Fatalf("midFrame=%v: %v", midFrame, err)
		}
		long := w.count() >= agentapi.ResetBurst+agentapi.MaxResetBurst
		if !midFrame && long {
			t.Errorf("a guest at a frame boundary needed the long burst (%d bytes written)", w.count())
		}
		if midFrame && !long {
			t.Errorf("mid-frame reset wrote %d bytes: the short burst cannot have ended the frame", w.count())
		}
		echoes(t, w.Conn)
		cancel()
		w.Close()
		port.Close()
	}
}
