package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/guestnet"
	"golang.org/x/sys/unix"
)

// Guest network addresses: one definition, in internal/guestnet, shared
// with the host.
const (
	guestIP      = guestnet.GuestIP
	guestMask    = guestnet.GuestMask
	slirpGateway = guestnet.Gateway
	slirpDNS     = guestnet.SlirpDNS
	nicName      = guestnet.NIC
)

// dnsForward is where the host answers DNS, over TCP.
var dnsForward = net.JoinHostPort(guestnet.DNSForward, strconv.Itoa(guestnet.DNSPort))

// setupNetwork brings up lo and, when the kernel command line asks for a
// network (mvm.net=allowlist|unrestricted|inbound), eth0 with the static
// address QEMU's user network expects. For an allowlist it starts a DNS
// stub on 127.0.0.1:53 that forwards each query over TCP to the host,
// which answers only for allowed names. Policy is enforced on the host:
// nothing here widens or narrows what the guest can reach.
func setupNetwork() error {
	if err := ifUp("lo", nil); err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	mode := netMode()
	if mode == "" {
		return nil
	}
	if err := waitForFile("/sys/class/net/"+nicName, 5*time.Second); err != nil {
		return err
	}
	if err := ifUp(nicName, &ifAddr{ip: guestIP, mask: guestMask}); err != nil {
		return fmt.Errorf("%s: %w", nicName, err)
	}
	switch mode {
	case guestnet.ModeAllowlist:
		if err := writeResolvConf("nameserver 127.0.0.1\noptions timeout:3 attempts:2\n"); err != nil {
			return err
		}
		return startDNSStub()
	case guestnet.ModeUnrestricted:
		if err := addDefaultRoute(slirpGateway); err != nil {
			return fmt.Errorf("default route: %w", err)
		}
		return writeResolvConf("nameserver " + slirpDNS + "\n")
	case guestnet.ModeInbound:
		// Published ports only: no egress, no resolver.
		return nil
	}
	return fmt.Errorf("unknown %s=%q", guestnet.KernelArgKey, mode)
}

func netMode() string {
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, guestnet.KernelArgKey+"="); ok {
			return v
		}
	}
	return ""
}

func writeResolvConf(s string) error {
	os.MkdirAll("/etc", 0o755)
	os.Remove("/etc/resolv.conf") // may be a dangling symlink in Debian images
	return os.WriteFile("/etc/resolv.conf", []byte(s), 0o644)
}

type ifAddr struct{ ip, mask string }

// ifUp sets an IPv4 address (when given) and brings the interface up.
func ifUp(name string, a *ifAddr) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if a != nil {
		for _, x := range []struct {
			req  uint
			addr string
		}{{unix.SIOCSIFADDR, a.ip}, {unix.SIOCSIFNETMASK, a.mask}} {
			ifr, err := unix.NewIfreq(name)
			if err != nil {
				return err
			}
			if err := ifr.SetInet4Addr(net.ParseIP(x.addr).To4()); err != nil {
				return err
			}
			if err := unix.IoctlIfreq(fd, x.req, ifr); err != nil {
				return fmt.Errorf("set %s: %w", x.addr, err)
			}
		}
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP | unix.IFF_RUNNING)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// addDefaultRoute adds "default via gw" with one rtnetlink request.
func addDefaultRoute(gw string) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	ip := net.ParseIP(gw).To4()
	const rtmsgLen = 12
	attrLen := 4 + 4
	msg := make([]byte, unix.SizeofNlMsghdr+rtmsgLen+attrLen)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.RTM_NEWROUTE)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	ne.PutUint32(msg[8:], 1) // seq
	rt := msg[unix.SizeofNlMsghdr:]
	rt[0] = unix.AF_INET
	rt[4] = unix.RT_TABLE_MAIN
	rt[5] = unix.RTPROT_BOOT
	rt[6] = unix.RT_SCOPE_UNIVERSE
	rt[7] = unix.RTN_UNICAST
	attr := rt[rtmsgLen:]
	ne.PutUint16(attr[0:], uint16(attrLen))
	ne.PutUint16(attr[2:], unix.RTA_GATEWAY)
	copy(attr[4:], ip)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if code := int32(ne.Uint32(m.Data)); code != 0 {
				return unix.Errno(-code)
			}
		}
	}
	return nil
}

// startDNSStub answers UDP DNS on 127.0.0.1:53 by relaying each query over
// TCP to the host (QEMU's guest forwards are TCP only).
func startDNSStub() error {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:53")
	if err != nil {
		return fmt.Errorf("dns stub: %w", err)
	}
	sem := make(chan struct{}, 16)
	go func() {
		for {
			buf := make([]byte, 4096)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				log.Printf("dns stub: %v", err)
				return
			}
			if n < 12 {
				continue
			}
			select {
			case sem <- struct{}{}:
			default:
				continue // overloaded: the client retries
			}
			go func() {
				defer func() { <-sem }()
				resp, err := relayDNS(buf[:n])
				if err == nil {
					pc.WriteTo(resp, from)
				}
			}()
		}
	}()
	return nil
}

// dnsRelay holds the one TCP connection to the host's DNS forward.
// Queries take turns on it: they are answered in well under a
// millisecond on the host, and one connection means one helper process
// instead of one per query.
type dnsRelay struct {
	mu sync.Mutex
	c  net.Conn
}

var relay dnsRelay

func relayDNS(q []byte) ([]byte, error) {
	relay.mu.Lock()
	defer relay.mu.Unlock()
	for attempt := 0; attempt < 2; attempt++ {
		if relay.c == nil {
			c, err := net.DialTimeout("tcp4", dnsForward, 5*time.Second)
			if err != nil {
				return nil, err
			}
			relay.c = c
		}
		resp, err := dnsRoundTrip(relay.c, q)
		if err == nil {
			return resp, nil
		}
		relay.c.Close() // stale connection: retry on a new one
		relay.c = nil
	}
	return nil, errors.New("dns relay failed")
}

func dnsRoundTrip(c net.Conn, q []byte) ([]byte, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := make([]byte, 2+len(q))
	binary.BigEndian.PutUint16(msg, uint16(len(q)))
	copy(msg[2:], q)
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	resp := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, resp); err != nil {
		return nil, err
	}
	if len(resp) >= 2 && len(q) >= 2 && (resp[0] != q[0] || resp[1] != q[1]) {
		return nil, errors.New("dns id mismatch")
	}
	c.SetDeadline(time.Time{})
	return resp, nil
}
