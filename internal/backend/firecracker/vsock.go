package firecracker

import (
	"context"
	"errors"
	"fmt"
	"github.com/mvm-sandbox/mvm/internal/backend"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Firecracker's hybrid vsock (docs/vsock.md): the host connects to the
// device's unix socket, writes "CONNECT <port>\n" and reads
// "OK <host port>\n"; from then on the connection is a byte pipe to the
// guest's listener on <port>. When nothing listens on the port yet,
// Firecracker closes the connection instead.

// maxAckLine bounds the acknowledgement line ("OK 1073741824").
const maxAckLine = 64

// errNotListening is a connection closed before the acknowledgement: the
// guest has not bound the port yet (or the device is not up yet).
var errNotListening = errors.New("guest is not listening on the vsock port yet")

// errProtocol is an answer that is not the documented acknowledgement.
var errProtocol = errors.New("hybrid vsock: bad answer")

// dialVsock connects to guest port through the hybrid vsock socket name
// in dir, retrying while the socket is missing or the guest is not
// listening, until ctx ends or done is closed.
func dialVsock(ctx context.Context, dir, name string, port uint32, done <-chan struct{}) (net.Conn, error) {
	var last error
	for {
		conn, err := backend.DialUnix(ctx, dir, name)
		if err == nil {
			err = vsockConnect(ctx, conn, port)
			if err == nil {
				return conn, nil
			}
			conn.Close()
			if errors.Is(err, errProtocol) {
				return nil, err
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect vsock port %d: %w (last: %v)", port, ctx.Err(), last)
		case <-done:
			return nil, fmt.Errorf("connect vsock port %d: vmm exited", port)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// vsockConnect runs the CONNECT/OK exchange on conn. It reads one byte at
// a time so that nothing the guest sends right after the acknowledgement
// (the agent speaks first) is consumed here.
func vsockConnect(ctx context.Context, conn net.Conn, port uint32) error {
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	defer conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "CONNECT "+strconv.FormatUint(uint64(port), 10)+"\n"); err != nil {
		return fmt.Errorf("%w: %v", errNotListening, err)
	}
	var line []byte
	b := make([]byte, 1)
	for {
		n, err := conn.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			if len(line) >= maxAckLine {
				return fmt.Errorf("%w: line longer than %d bytes", errProtocol, maxAckLine)
			}
			line = append(line, b[0])
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				return errNotListening
			}
			return err
		}
	}
	s := strings.TrimSuffix(string(line), "\r")
	rest, ok := strings.CutPrefix(s, "OK ")
	if !ok {
		return fmt.Errorf("%w: %q", errProtocol, s)
	}
	if _, err := strconv.ParseUint(rest, 10, 32); err != nil {
		return fmt.Errorf("%w: %q", errProtocol, s)
	}
	return nil
}
