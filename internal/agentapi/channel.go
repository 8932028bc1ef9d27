package agentapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// The guest channel is a byte pipe with no connection semantics (a serial
// port), so both sides agree on where the multiplexed session starts:
//
//	guest: "MVM-HELLO 1\n" repeated until it reads "MVM-ACK\n"
//	host:  "MVM-ACK\n" once it has read a hello
//	guest: "MVM-READY\n", then yamux frames
//
// The host discards everything before "MVM-READY\n", so repeated hellos
// never reach the session. The guest speaks first: the host never writes
// into a port the guest has not opened.
const (
	helloLine = "MVM-HELLO 1"
	ackLine   = "MVM-ACK"
	readyLine = "MVM-READY"

	maxLine     = 128     // longest line accepted during the handshake
	maxPreamble = 1 << 20 // bytes the host reads before giving up on a guest
)

// ErrHandshake reports a guest that did not complete the channel handshake.
var ErrHandshake = errors.New("agent channel handshake failed")

// readLine reads one '\n'-terminated line one byte at a time, so nothing
// after the line is consumed. retryEOF makes it wait on EOF (a serial port
// reads EOF while the other side is absent).
func readLine(ctx context.Context, r io.Reader, budget *int, retryEOF bool) (string, error) {
	var line []byte
	b := make([]byte, 1)
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := r.Read(b)
		if n == 1 {
			*budget--
			if *budget < 0 {
				return "", fmt.Errorf("%w: no hello within %d bytes", ErrHandshake, maxPreamble)
			}
			if b[0] == '\n' {
				return string(line), nil
			}
			if len(line) < maxLine {
				line = append(line, b[0])
			}
			continue
		}
		if err == io.EOF && retryEOF {
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return "", err
		}
	}
}

// GuestHandshake runs the guest side of the handshake on port.
func GuestHandshake(ctx context.Context, port io.ReadWriter) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(HandshakeInterval)
		defer t.Stop()
		for {
			if _, err := io.WriteString(port, helloLine+"\n"); err != nil {
				writeErr = err
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	var err error
	for {
		// The budget is per line here: a host resetting a restored
		// guest's channel (HostReset) may send any number of empty lines.
		budget := maxPreamble
		var line string
		line, err = readLine(ctx, port, &budget, true)
		if err != nil || line == ackLine {
			break
		}
	}
	cancel()
	wg.Wait() // no hello may follow the ready line
	if err != nil {
		if writeErr != nil {
			err = writeErr
		}
		return fmt.Errorf("%w: %v", ErrHandshake, err)
	}
	_, err = io.WriteString(port, readyLine+"\n")
	return err
}

// HostHandshake runs the host side of the handshake on conn.
func HostHandshake(ctx context.Context, conn net.Conn) error {
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	defer conn.SetReadDeadline(time.Time{})
	budget := maxPreamble
	acked := false
	for {
		line, err := readLine(ctx, conn, &budget, false)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w: %v", ErrHandshake, err)
		}
		if strings.HasSuffix(line, helloLine) {
			// A restored guest's first hello may follow the end of its
			// old session (no newline in between).
			line = helloLine
		}
		switch line {
		case helloLine:
			if !acked {
				if _, err := io.WriteString(conn, ackLine+"\n"); err != nil {
					return fmt.Errorf("%w: %v", ErrHandshake, err)
				}
				acked = true
			}
		case readyLine:
			if acked {
				return nil
			}
		}
	}
}

// Resetting a restored guest's channel. A guest restored from a saved
// state (snapshot, pause to disk) is still inside the channel session it
// had when it was saved, and its agent only starts a new handshake once
// that session ends. The host ends it in band: it writes newline bytes.
// In a session, a frame header that starts with '\n' is a protocol error
// (yamux's version byte is 0), so the guest's session ends and its agent
// starts a new handshake; in a handshake, empty lines are ignored. Only
// if the guest was saved in the middle of a frame does the first burst go
// into that frame's body; MaxResetBurst is longer than any frame a
// session admits (its window), so that one always reaches a header.
const (
	ResetBurst    = 16
	MaxResetBurst = 1<<20 + 16
)

// HostReset writes n newlines on conn (see ResetBurst).
func HostReset(ctx context.Context, conn net.Conn, n int) error {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetWriteDeadline(dl)
		defer conn.SetWriteDeadline(time.Time{})
	}
	if _, err := conn.Write(bytes.Repeat([]byte{'\n'}, n)); err != nil {
		return fmt.Errorf("reset the agent channel: %w", err)
	}
	return nil
}

func yamuxConfig(log io.Writer) *yamux.Config {
	cfg := yamux.DefaultConfig()
	// Liveness of the guest is the VMM's exit, not a ping: under emulation
	// a busy guest can be slow to answer and must not be declared dead.
	cfg.EnableKeepAlive = false
	cfg.ConnectionWriteTimeout = 60 * time.Second
	cfg.MaxStreamWindowSize = 1 << 20
	cfg.AcceptBacklog = 64
	if log == nil {
		log = io.Discard
	}
	cfg.LogOutput = log
	return cfg
}

// GuestSession wraps the guest end of a handshaken channel.
func GuestSession(port io.ReadWriteCloser, log io.Writer) (*yamux.Session, error) {
	return yamux.Server(port, yamuxConfig(log))
}

// HostSession wraps the host end of a handshaken channel.
func HostSession(conn net.Conn, log io.Writer) (*yamux.Session, error) {
	return yamux.Client(conn, yamuxConfig(log))
}
