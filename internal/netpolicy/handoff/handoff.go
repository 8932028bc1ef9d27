// Package handoff passes a guest connection from the egress helper (the
// process QEMU starts per guest connection on an allowed forward) to the
// sandbox supervisor's egress proxy, over a unix socket with SCM_RIGHTS.
// It is its own small package so the helper binary links nothing else.
package handoff

import (
	"errors"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Prefix starts each helper's message on the egress socket; the target
// ("dns" or GUESTADDR:PORT) and a newline follow.
const Prefix = "mvm-egress 1 "

// Ack is the proxy's reply once it holds the connection.
const Ack = "ok\n"

// Deadline bounds a helper's whole handoff: a helper is a process, it must
// not linger.
const Deadline = 5 * time.Second

// Run is the helper's body: fd 0 (and 1 and 2) is the guest's connection.
// It hands fd 0 to the proxy listening on sock and returns. It writes
// nothing, since anything written to stderr would reach the guest.
func Run(sock, target string) error {
	if null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0); err == nil {
		unix.Dup2(int(null.Fd()), 2)
		null.Close()
	}
	return Send(sock, target, 0)
}

// Send passes fd to the proxy listening on sock, for target, and waits for
// its Ack.
func Send(sock, target string, fd int) error {
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(Deadline))
	if _, _, err := conn.WriteMsgUnix([]byte(Prefix+target+"\n"), unix.UnixRights(fd), nil); err != nil {
		return err
	}
	var ack [len(Ack)]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil || string(ack[:]) != Ack {
		return errors.New("egress proxy did not accept the connection")
	}
	return nil
}
