// Package backend defines what the runtime needs from a virtual machine
// monitor. Each VMM lives in its own subpackage (qemu, firecracker).
package backend

import (
	"context"
	"net"
	"os"
	"time"
)

// Disk is a block device given to the guest, in order (/dev/vda, /dev/vdb...).
type Disk struct {
	Path     string
	ReadOnly bool
	// Serial, when set, names the disk to the guest (virtio-blk serial,
	// at most 20 bytes): volumes are found by it, not by order.
	Serial string `json:"serial,omitempty"`
}

// Share is a host directory given to the guest as a virtiofs file system
// with tag Tag. ReadOnly is enforced on the host (a read-only bind mount
// under the file server), not only by the guest's mount flags.
type Share struct {
	Tag      string `json:"tag"`
	HostPath string `json:"host_path"`
	ReadOnly bool   `json:"read_only"`
}

// Spec describes one microVM.
type Spec struct {
	// Name tags the VMM process so that it can be recognised by pid.
	Name      string
	Kernel    string // uncompressed vmlinux (PVH ELF)
	Initrd    string
	Cmdline   string // extra kernel command line; the backend adds its own
	CPUs      int
	MemoryMiB int
	Disks     []Disk
	// Dir is the sandbox's private directory: sockets and the console log
	// are created there. It must be short enough for unix socket paths.
	Dir string
	// Accel is "kvm" or "tcg"; empty chooses the best available.
	Accel string
	// Network, when set, gives the guest one NIC on the VMM's user-mode
	// network; nil means no network device at all.
	Network *Network `json:"network,omitempty"`
	// Console, when set, receives the guest's serial console (typically
	// the write end of a pipe whose reader caps the log); otherwise the
	// VMM writes Dir/console.log itself, without bound.
	Console *os.File `json:"-"`
	// Shares are host directories (virtiofs); guest RAM is then shared
	// memory, as vhost-user needs.
	Shares []Share `json:"shares,omitempty"`
	// Incoming, when set, is a saved memory and device state to start
	// from instead of booting: the VM waits, stopped, until the backend
	// loads it (QEMU: CompleteIncoming). Everything else in the spec must
	// describe the same machine the state was saved from.
	Incoming string `json:"incoming,omitempty"`
}

// Network is a guest NIC on user-mode networking (QEMU slirp).
type Network struct {
	// Restrict cuts the guest off from everything but the forwards.
	Restrict  bool       `json:"restrict"`
	GuestFwds []GuestFwd `json:"guest_fwds,omitempty"`
	HostFwds  []HostFwd  `json:"host_fwds,omitempty"`
}

// GuestFwd hands each guest TCP connection to Addr:Port to a new Cmd
// process whose stdin and stdout are the connection.
type GuestFwd struct {
	Addr string `json:"addr"`
	Port int    `json:"port"`
	Cmd  string `json:"cmd"`
}

// HostFwd publishes guest port GuestPort on HostAddr:HostPort.
type HostFwd struct {
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
}

// Machine is a started microVM.
type Machine interface {
	// Pid is the VMM's process id.
	Pid() int
	// Accel reports the accelerator the VM runs under.
	Accel() string
	// ConsolePath is the file receiving the guest's serial console.
	ConsolePath() string
	// DialChannel connects to the guest agent's channel.
	DialChannel(ctx context.Context) (net.Conn, error)
	// Done is closed when the VMM process has exited.
	Done() <-chan struct{}
	// ExitErr describes how the VMM exited, once Done is closed.
	ExitErr() error
	// Pause and Resume stop and continue the guest's vCPUs.
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Kill ends the VMM at once.
	Kill() error
	// Stop asks the VMM to quit and kills it if it has not exited by the
	// deadline of ctx.
	Stop(ctx context.Context) error
}

// DefaultStopGrace is how long a stop waits before killing.
const DefaultStopGrace = 5 * time.Second
