package agent

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
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

// TestListenVsockWithoutDevice: on a host or guest with no vsock device
// (this test machine, QEMU under TCG) listening fails quietly.
func TestListenVsockWithoutDevice(t *testing.T) {
	l, err := listenVsock(agentapi.VsockPort)
	if err == nil {
		l.Close()
		t.Skip("this machine has a vsock device with a guest cid")
	}
	t.Logf("no vsock: %v", err)
}
