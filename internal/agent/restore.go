package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"sync"
	"time"
	"unsafe"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/atomicfile"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/guestid"
	"github.com/mvm-sandbox/mvm/internal/guestnet"
	"golang.org/x/sys/unix"
)

// A guest restored from a memory snapshot wakes up with the RNG state,
// clock, hostname, machine-id and MAC of the moment the snapshot was
// taken: every clone of one snapshot would share them (measured: the
// first 8 bytes of /dev/urandom were equal in five clones). Restored
// replaces all of them with what the host sends.

// random(4) ioctls (include/uapi/linux/random.h); x/sys/unix has no
// constants for them.
const (
	rndAddEntropy  = 0x40085203 // _IOW('R', 0x03, int[2])
	rndReseedCRNG  = 0x5207     // _IO('R', 0x07)
	machineIDPath  = "/etc/machine-id"
	hostnamePath   = "/etc/hostname"
	arpNotifyKnob  = "/proc/sys/net/ipv4/conf/" + guestnet.NIC + "/arp_notify"
	randomDevice   = "/dev/urandom"
	ifreqBytes     = 40 // struct ifreq on 64-bit Linux
	arphrdEther    = 1  // ARPHRD_ETHER
	hwaddrDataSize = 14 // sockaddr.sa_data
)

// restoreSys is what Restored changes outside the agent: each a seam, so
// the handler is tested without touching the host's clock or hostname.
type restoreSys struct {
	addEntropy  func(b []byte) error
	reseed      func() error
	now         func() time.Time
	setClock    func(unixNanos int64) error
	setHostname func(h string) error
	// writeFile replaces a file atomically (a new file renamed over it).
	writeFile func(path string, data []byte, perm os.FileMode) error
	// setMAC gives the NIC a new address (the interface stays up).
	setMAC func(ifname string, mac net.HardwareAddr) error
	// reapplyNet re-applies the static address set of a network mode.
	reapplyNet func(mode string) error
}

var hostRestoreSys = &restoreSys{
	addEntropy:  addEntropy,
	reseed:      reseedCRNG,
	now:         time.Now,
	setClock:    setClock,
	setHostname: func(h string) error { return unix.Sethostname([]byte(h)) },
	writeFile:   atomicfile.WriteFile,
	setMAC:      setMAC,
	reapplyNet:  applyStaticNet,
}

// restoreState is the server's part of Restored.
type restoreState struct {
	mu  sync.Mutex // one Restored at a time
	sys *restoreSys
	// netMode is the network mode the guest was booted with ("" = no NIC).
	netMode string
	// hostname is the hostname a Restored set; empty until one did.
	hostMu   sync.Mutex
	hostname string
}

// currentHostname is the guest's hostname: the boot one, or the one the
// last Restored set.
func (s *server) currentHostname() string {
	s.restore.hostMu.Lock()
	defer s.restore.hostMu.Unlock()
	if s.restore.hostname != "" {
		return s.restore.hostname
	}
	return s.hostname
}

func (s *server) Restored(_ context.Context, req *pb.RestoredRequest) (*pb.RestoredResponse, error) {
	s.markRequest()
	id := guestid.Identity{
		Entropy: req.Entropy, UnixNanos: req.UnixNanos, Hostname: req.Hostname, MachineID: req.MachineId,
	}
	if req.Mac != nil {
		id.MAC = net.HardwareAddr(req.Mac)
	}
	if err := id.Validate(); err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "restored: %v", err)
	}
	s.restore.mu.Lock()
	defer s.restore.mu.Unlock()
	sys := s.restore.sys
	if sys == nil {
		// The real syscalls change the whole machine: only in a guest,
		// where the agent is PID 1, never on a host running it as a
		// process.
		if os.Getpid() != 1 {
			return nil, errdefs.Errorf(errdefs.KindFailedPrecondition, "restored: this agent is not a guest's init (pid %d); it does not change the clock, RNG or hostname of the machine it runs on", os.Getpid())
		}
		sys = hostRestoreSys
	}
	if id.MAC != nil && s.restore.netMode == "" {
		return nil, errdefs.Errorf(errdefs.KindFailedPrecondition, "restored: a MAC was given but this guest has no NIC")
	}
	// The RNG first: nothing else may draw from the snapshot's state.
	if err := sys.addEntropy(id.Entropy); err != nil {
		return nil, restoreErr("add entropy", err)
	}
	if err := sys.reseed(); err != nil {
		return nil, restoreErr("reseed the RNG", err)
	}
	before := sys.now().UnixNano()
	if err := sys.setClock(id.UnixNanos); err != nil {
		return nil, restoreErr("set the clock", err)
	}
	resp := &pb.RestoredResponse{ClockStepNanos: id.UnixNanos - before}
	if err := sys.setHostname(id.Hostname); err != nil {
		return nil, restoreErr("set the hostname", err)
	}
	s.restore.hostMu.Lock()
	s.restore.hostname = id.Hostname
	s.restore.hostMu.Unlock()
	if id.MachineID != "" { // empty: a resume keeps the machine's own
		if err := sys.writeFile(machineIDPath, []byte(id.MachineID+"\n"), 0o444); err != nil {
			return nil, restoreErr("write "+machineIDPath, err)
		}
	}
	if err := sys.writeFile(hostnamePath, []byte(id.Hostname+"\n"), 0o644); err != nil {
		log.Printf("restored: %s not rewritten: %v", hostnamePath, err)
	} else {
		resp.HostnameFile = true
	}
	if id.MAC != nil {
		if err := sys.setMAC(guestnet.NIC, id.MAC); err != nil {
			return nil, restoreErr("set the MAC of "+guestnet.NIC, err)
		}
		if err := sys.reapplyNet(s.restore.netMode); err != nil {
			return nil, restoreErr("re-apply the addresses of "+guestnet.NIC, err)
		}
		resp.Nic = true
	}
	return resp, nil
}

func restoreErr(what string, err error) error {
	kind := errdefs.KindGuest
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EROFS) {
		kind = errdefs.KindPermissionDenied
	}
	return errdefs.Errorf(kind, "restored: %s: %v", what, err)
}

// addEntropy mixes b into the input pool and credits it in full
// (RNDADDENTROPY takes struct rand_pool_info: entropy_count in bits,
// buf_size in bytes, then the bytes).
func addEntropy(b []byte) error {
	f, err := os.OpenFile(randomDevice, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	info := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(info[0:], uint32(8*len(b)))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&info[0])))
	if errno != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", errno)
	}
	return nil
}

// reseedCRNG makes the kernel's crng take a new key from the input pool
// now, instead of at its next scheduled reseed.
func reseedCRNG() error {
	f, err := os.OpenFile(randomDevice, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := unix.IoctlRetInt(int(f.Fd()), rndReseedCRNG); err != nil {
		return fmt.Errorf("RNDRESEEDCRNG: %w", err)
	}
	return nil
}

func setClock(unixNanos int64) error {
	ts := unix.NsecToTimespec(unixNanos)
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

// setMAC changes a live interface's hardware address (SIOCSIFHWADDR).
// arp_notify is set first, so the kernel announces the new address with a
// gratuitous ARP: the VMM's user network learns it before it next answers
// the guest.
func setMAC(ifname string, mac net.HardwareAddr) error {
	if err := os.WriteFile(arpNotifyKnob, []byte("1\n"), 0o644); err != nil {
		log.Printf("restored: %s: %v", arpNotifyKnob, err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var ifr [ifreqBytes]byte
	if len(ifname) >= unix.IFNAMSIZ {
		return fmt.Errorf("interface name %q too long", ifname)
	}
	copy(ifr[:unix.IFNAMSIZ], ifname)
	binary.NativeEndian.PutUint16(ifr[unix.IFNAMSIZ:], arphrdEther)
	copy(ifr[unix.IFNAMSIZ+2:unix.IFNAMSIZ+2+hwaddrDataSize], mac)
	set := func() error {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCSIFHWADDR, uintptr(unsafe.Pointer(&ifr[0])))
		if errno != 0 {
			return fmt.Errorf("SIOCSIFHWADDR: %w", errno)
		}
		return nil
	}
	err = set()
	if !errors.Is(err, unix.EBUSY) {
		return err
	}
	// A driver that cannot change the address of a live interface: take
	// it down (which drops its routes; applyStaticNet puts them back).
	if err := ifDown(fd, ifname); err != nil {
		return err
	}
	return set()
}

func ifDown(fd int, name string) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() &^ unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// applyStaticNet (re-)applies the guest's DHCP-free address set for mode:
// eth0 up with the static address, and in unrestricted mode the default
// route. Each step is idempotent, so it is safe on a guest that has them.
func applyStaticNet(mode string) error {
	if err := ifUp(nicName, &ifAddr{ip: guestIP, mask: guestMask}); err != nil {
		return err
	}
	if mode == guestnet.ModeUnrestricted {
		if err := addDefaultRoute(slirpGateway); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("default route: %w", err)
		}
	}
	return nil
}
