package agentapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHandshakeBothSides(t *testing.T) {
	host, guest := socketPair(t)
	defer host.Close()
	defer guest.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- GuestHandshake(ctx, guest) }()
	if err := HostHandshake(ctx, host); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// Nothing of the handshake may follow READY: the next bytes are the
	// session's.
	go guest.Write([]byte("session-bytes"))
	buf := make([]byte, 13)
	if _, err := io.ReadFull(host, buf); err != nil || string(buf) != "session-bytes" {
		t.Fatalf("after the handshake: %q %v", buf, err)
	}
}

func TestHostHandshakeSkipsNoise(t *testing.T) {
	host, guest := socketPair(t)
	defer host.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		guest.Write([]byte("boot noise\n\x00\xff garbage without newline... MVM-READY\n")) // READY before hello is ignored
		guest.Write([]byte(helloLine + "\n" + helloLine + "\n"))
		line := make([]byte, len(ackLine)+1)
		io.ReadFull(guest, line)
		guest.Write([]byte(helloLine + "\n" + readyLine + "\n"))
	}()
	if err := HostHandshake(ctx, host); err != nil {
		t.Fatal(err)
	}
}

func TestHostHandshakeBoundsAHostileGuest(t *testing.T) {
	host, guest := socketPair(t)
	defer host.Close()
	go func() {
		junk := bytes.Repeat([]byte("x"), 64<<10)
		for i := 0; i < 40; i++ { // 2.5 MiB, never a hello
			if _, err := guest.Write(junk); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := HostHandshake(ctx, host)
	if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "no hello") {
		t.Fatalf("want a bounded failure, got %v", err)
	}
}

func TestHostHandshakeHonoursDeadline(t *testing.T) {
	host, guest := socketPair(t)
	defer host.Close()
	defer guest.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := HostHandshake(ctx, host); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("silent guest: %v", err)
	}
}

// FuzzHostHandshake: whatever a guest sends, the host side ends (success
// or error) without panicking.
func FuzzHostHandshake(f *testing.F) {
	f.Add([]byte(helloLine + "\n" + readyLine + "\n"))
	f.Add([]byte("\n\n\n"))
	f.Add([]byte(readyLine + "\n" + helloLine))
	f.Fuzz(func(t *testing.T, data []byte) {
		host, guest := net.Pipe()
		go func() {
			guest.Write(data)
			guest.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		go io.Copy(io.Discard, guest) // swallow the ack
		HostHandshake(ctx, host)
		host.Close()
	})
}

// socketPair returns two connected unix sockets: buffered like the real
// channel (net.Pipe is synchronous and would deadlock a test in which both
// sides write before reading).
func socketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	a, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}
