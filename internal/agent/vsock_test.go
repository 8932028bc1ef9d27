package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// TestServeListenerChannels serves the agent on a unix listener the way
// it serves vsock connections, and has two hosts connect in turn, each
// running the host handshake, yamux and gRPC exactly as the supervisor does.
func TestServeListenerChannels(t *testing.T) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "ch.sock"))
	if err != nil {
		t.Fatal(err)
	}
	s := &server{hostname: "box", reaper: nil}
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(agentapi.MaxMessageBytes), grpc.MaxSendMsgSize(agentapi.MaxMessageBytes))
	pb.RegisterAgentServer(gs, s)
	var bound atomic.Int32
	errc := make(chan error, 1)
	go func() { errc <- serveListener(l, gs, func() { bound.Add(1) }) }()

	for i := 0; i < 2; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := net.Dial("unix", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if err := agentapi.HostHandshake(ctx, conn); err != nil {
			t.Fatalf("host handshake %d: %v", i, err)
		}
		sess, err := agentapi.HostSession(conn, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		client, err := agentapi.Dial(ctx, func(context.Context) (net.Conn, error) { return sess.Open() })
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		if client.Hello.Hostname != "box" {
			t.Fatalf("hello %+v", client.Hello)
		}
		client.Close()
		sess.Close()
		cancel()
	}
	if n := bound.Load(); n != 2 {
		t.Fatalf("bound called %d times, want 2", n)
	}
	l.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("serveListener returned nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serveListener did not return after Close")
	}
	gs.Stop()
}

// TestServeListenerSilentHost: a connection that never handshakes does
// not stop other connections from being served.
func TestServeListenerSilentHost(t *testing.T) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "ch.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	gs := grpc.NewServer()
	pb.RegisterAgentServer(gs, &server{hostname: "box"})
	defer gs.Stop()
	go serveListener(l, gs, func() {})
	silent, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := agentapi.HostHandshake(ctx, conn); err != nil {
		t.Fatal(err)
	}
}

// TestListenVsockWithoutDevice: a guest whose vsock transport has no
// device (no /dev/vsock, or a local CID of "any" or the host's) gets an
// error from listenVsock, which the agent takes to mean "serial port
// only"; a guest with a CID goes on to bind the socket.
func TestListenVsockWithoutDevice(t *testing.T) {
	defer func(f func() (uint32, error)) { localCID = f }(localCID)
	noDev := errors.New("open /dev/vsock: no such file or directory")
	for _, c := range []struct {
		cid  uint32
		err  error
		want string
	}{
		{0, noDev, "/dev/vsock"},
		{unix.VMADDR_CID_ANY, nil, "no device (local cid -1)"},
		{unix.VMADDR_CID_HOST, nil, "no device (local cid 2)"},
		{1, nil, "no device (local cid 1)"},
	} {
		localCID = func() (uint32, error) { return c.cid, c.err }
		l, err := listenVsock(agentapi.VsockPort)
		if err == nil {
			l.Close()
			t.Fatalf("cid %d, %v: listened", c.cid, c.err)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("cid %d, %v: error %q, want it to say %q", c.cid, c.err, err, c.want)
		}
	}
	// With a guest CID the device check passes and the socket is made: the
	// error, if any, now comes from socket/bind (this host's vsock), never
	// from the device check.
	localCID = func() (uint32, error) { return 3, nil }
	l, err := listenVsock(agentapi.VsockPort)
	if err == nil {
		l.Close()
	} else if strings.Contains(err.Error(), "no device") {
		t.Fatalf("cid 3 refused by the device check: %v", err)
	}
}
