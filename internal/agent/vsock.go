package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// The guest channel over vsock (Firecracker; QEMU with vhost-vsock): every
// accepted connection runs the same handshake and yamux session as the
// virtio-serial port and is served by the same gRPC server. The vsock
// transport is a module (vmw_vsock_virtio_transport) that only a vsock
// initramfs carries; without it, or without a device, listenVsock fails
// quietly and the serial port is the only channel.

// ioctlGetLocalCID is IOCTL_VM_SOCKETS_GET_LOCAL_CID on Linux: _IO(7, 0xb9).
const ioctlGetLocalCID = 0x7b9

// listenVsock listens on the guest's vsock port, or fails when the guest
// has no vsock transport with a device behind it.
func listenVsock(port uint32) (net.Listener, error) {
	if cid, err := localCID(); err != nil {
		return nil, err
	} else if cid == unix.VMADDR_CID_ANY || cid <= unix.VMADDR_CID_HOST {
		return nil, fmt.Errorf("vsock: no device (local cid %d)", int32(cid))
	}
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &vsockListener{f: os.NewFile(uintptr(fd), "vsock"), port: port}, nil
}

// localCID asks /dev/vsock for this guest's context id; VMADDR_CID_ANY
// means no transport has a device. A variable so that tests can play a
// guest with and without a device.
var localCID = devVsockCID

func devVsockCID() (uint32, error) {
	fd, err := unix.Open("/dev/vsock", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return unix.IoctlGetUint32(fd, ioctlGetLocalCID)
}

// vsockListener is a net.Listener on an AF_VSOCK socket. The net package
// does not know the family, so the fd goes through os.File, which still
// uses the runtime poller (the socket is non-blocking) and makes Close
// interrupt a pending Accept.
type vsockListener struct {
	f    *os.File
	port uint32
}

func (l *vsockListener) Accept() (net.Conn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		return aerr != unix.EAGAIN
	})
	if err != nil {
		return nil, err
	}
	if aerr != nil {
		return nil, aerr
	}
	return &vsockConn{File: os.NewFile(uintptr(nfd), "vsock-conn")}, nil
}

func (l *vsockListener) Close() error   { return l.f.Close() }
func (l *vsockListener) Addr() net.Addr { return vsockAddr{port: l.port} }

type vsockAddr struct{ port uint32 }

func (vsockAddr) Network() string  { return "vsock" }
func (a vsockAddr) String() string { return fmt.Sprintf("vsock:%d", a.port) }

// vsockConn is an accepted vsock connection; *os.File gives it reads,
// writes, close and deadlines.
type vsockConn struct{ *os.File }

func (c *vsockConn) LocalAddr() net.Addr  { return vsockAddr{} }
func (c *vsockConn) RemoteAddr() net.Addr { return vsockAddr{} }

// serveChannel runs the guest side of one channel: handshake, yamux
// session, gRPC. bound is called once the session exists. It returns when
// the session ends.
func serveChannel(ctx context.Context, port io.ReadWriteCloser, gs *grpc.Server, bound func()) error {
	if err := agentapi.GuestHandshake(ctx, port); err != nil {
		port.Close()
		return err
	}
	sess, err := agentapi.GuestSession(port, os.Stderr)
	if err != nil {
		port.Close()
		return err
	}
	bound()
	return gs.Serve(sess)
}

// channelHandshakeTimeout bounds the handshake of one accepted
// connection, so that a host that connects and stays silent holds no
// goroutine forever.
const channelHandshakeTimeout = 30 * time.Second

// serveListener serves every connection accepted on l as a channel until
// l fails.
func serveListener(l net.Listener, gs *grpc.Server, bound func()) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return err
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), channelHandshakeTimeout)
			defer cancel()
			err := serveChannel(ctx, c, gs, bound)
			c.Close()
			// A session ending is the host going away; only a failed
			// handshake is worth a console line.
			if errors.Is(err, agentapi.ErrHandshake) {
				log.Printf("vsock channel: %v", err)
			}
		}()
	}
}

// serveVsock serves the agent on l and, when the guest also has the
// virtio-serial port, on that too. A guest with vsock may have no serial
// port at all (Firecracker), so a missing port is not an error here. It
// returns when the vsock listener fails or the serial session ends (the
// host is gone, as on the serial-only path).
func (s *server) serveVsock(l net.Listener, gs *grpc.Server, bound func()) error {
	errc := make(chan error, 2)
	go func() { errc <- fmt.Errorf("vsock listener: %w", serveListener(l, gs, bound)) }()
	go func() {
		dev, err := findPort(agentapi.PortName, 15*time.Second)
		if err != nil {
			return // vsock only
		}
		port, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			errc <- fmt.Errorf("open %s: %w", dev, err)
			return
		}
		err = serveChannel(context.Background(), port, gs, bound)
		errc <- fmt.Errorf("agent channel closed: %v", err)
	}()
	return <-errc
}
