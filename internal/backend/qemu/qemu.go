// Package qemu runs microVMs with QEMU's microvm machine: virtio-mmio
// devices, KVM when usable and TCG otherwise, QMP for control, a
// virtio-serial port for the agent, and no NIC unless asked.
package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/backend"
)

// Binary is the QEMU executable; MVM_QEMU overrides it.
func Binary() string {
	if v := os.Getenv("MVM_QEMU"); v != "" {
		return v
	}
	return "qemu-system-x86_64"
}

// File names inside the sandbox directory.
const (
	ChannelSocket = "channel.sock"
	QMPSocket     = "qmp.sock"
	ConsoleLog    = "console.log"
	VMMLog        = "vmm.log"
)

// KernelCmdline is the command line every guest gets, before the
// sandbox-specific part. The same line is used by the boot benchmark's
// floor so that the two are comparable.
func KernelCmdline(accel string) string {
	parts := []string{"console=ttyS0", "reboot=t", "panic=-1", "quiet", "8250.nr_uarts=1"}
	if accel == "tcg" {
		if khz := hostTSCkHz(); khz > 0 {
			// The TSC under TCG is the host's TSC plus an offset: steady,
			// and a far better clock than the jiffies the kernel's
			// watchdog would otherwise fall back to (those lose ticks
			// when the vCPU thread is starved, and tick at 4 ms, so
			// CLOCK_MONOTONIC readings in the guest collide; busybox's
			// nslookup then sends its A and AAAA queries with one ID).
			parts = append(parts, "tsc_early_khz="+strconv.Itoa(khz), "tsc=reliable")
		}
	}
	return strings.Join(parts, " ")
}

// MachineType is the machine every guest gets (a snapshot restores only
// into the same one).
const MachineType = "microvm,x-option-roms=off,isa-serial=on"

// Args returns QEMU's argument list for spec under accel. The sandbox's
// sockets and console log are named relative to QEMU's working directory,
// spec.Dir, so that their paths fit a socket address however long the
// directory's path is.
func Args(spec backend.Spec, accel string) []string {
	cmdline := KernelCmdline(accel)
	if spec.Cmdline != "" {
		cmdline += " " + spec.Cmdline
	}
	args := []string{
		"-name", spec.Name,
		"-M", MachineOptions(spec),
		"-accel", accel,
		"-m", strconv.Itoa(spec.MemoryMiB),
		"-smp", strconv.Itoa(spec.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", spec.Kernel,
		"-append", cmdline,
		"-chardev", "file,id=con,path=" + consolePath(spec),
		"-serial", "chardev:con",
		"-device", "virtio-serial-device,max_ports=2",
		"-chardev", "socket,id=agent,path=" + ChannelSocket + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + agentapi.PortName,
		"-qmp", "unix:" + QMPSocket + ",server=on,wait=off",
	}
	if accel == "kvm" {
		args = append(args, "-cpu", "host")
	}
	if spec.Initrd != "" {
		args = append(args, "-initrd", spec.Initrd)
	}
	for i, d := range spec.Disks {
		id := fmt.Sprintf("disk%d", i)
		drive := "file=" + d.Path + ",if=none,format=raw,id=" + id + ",cache=unsafe"
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		dev := "virtio-blk-device,drive=" + id
		if d.Serial != "" {
			dev += ",serial=" + d.Serial
		}
		args = append(args, "-drive", drive, "-device", dev)
	}
	args = append(args, shareArgs(spec)...)
	args = append(args, netArgs(spec.Network)...)
	if spec.Incoming != "" {
		// Wait, stopped, for the saved state (CompleteIncoming).
		args = append(args, "-incoming", "defer", "-S")
	}
	return args
}

// MachineOptions is the -M argument of spec: the machine type and its
// options.
func MachineOptions(spec backend.Spec) string {
	return "microvm,x-option-roms=off,isa-serial=on" + memBackend(spec)
}

// consoleFD is the descriptor QEMU finds spec.Console on (ExtraFiles[0]).
const consoleFD = 3

// consolePath is where QEMU writes the serial console: the inherited
// spec.Console, or console.log in the sandbox directory.
func consolePath(spec backend.Spec) string {
	if spec.Console != nil {
		return "/dev/fd/" + strconv.Itoa(consoleFD)
	}
	return ConsoleLog // relative: QEMU runs in spec.Dir
}

// noteVMMLog appends a line from mvm itself to the VMM log (its last line
// describes the VMM's exit).
func noteVMMLog(dir, line string) {
	if f, err := os.OpenFile(filepath.Join(dir, VMMLog), os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
		fmt.Fprintln(f, line)
		f.Close()
	}
}

// memBackend names the shared-memory RAM backend that shares need.
func memBackend(spec backend.Spec) string {
	if len(spec.Shares) > 0 {
		return ",memory-backend=mem"
	}
	return ""
}

// Machine is a running QEMU process.
type Machine struct {
	*backend.Process
	dir   string
	accel string
	// incoming: started to load a saved state (Spec.Incoming).
	incoming bool

	mu  sync.Mutex // guards qmp
	qmp *qmp
}

var _ backend.Machine = (*Machine)(nil)

// Start launches QEMU for spec. The VMM dies with the calling process
// (PR_SET_PDEATHSIG), so a supervisor killed with SIGKILL takes its VM
// with it.
func Start(ctx context.Context, spec backend.Spec) (*Machine, error) {
	if spec.CPUs < 1 || spec.MemoryMiB < 64 {
		return nil, fmt.Errorf("qemu: need at least 1 cpu and 64 MiB (got %d, %d)", spec.CPUs, spec.MemoryMiB)
	}
	bin, err := exec.LookPath(Binary())
	if err != nil {
		return nil, fmt.Errorf("qemu: %s not found: run `mvmctl setup` (or apt-get install qemu-system-x86)", Binary())
	}
	accel := spec.Accel
	if accel == "" {
		accel = DetectAccel().Accel
	}
	logf, err := os.OpenFile(filepath.Join(spec.Dir, VMMLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	stopShares, sharesDied, err := startShares(ctx, spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, Args(spec, accel)...)
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if spec.Console != nil {
		cmd.ExtraFiles = []*os.File{spec.Console} // fd 3 = consoleFD
	}
	if spec.Incoming != "" {
		in, err := os.Open(spec.Incoming)
		if err != nil {
			stopShares()
			return nil, fmt.Errorf("qemu: saved state: %w", err)
		}
		defer in.Close() // QEMU holds its own copy
		if len(cmd.ExtraFiles) == 0 {
			cmd.ExtraFiles = []*os.File{nil} // fd 3 stays closed
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, in) // fd 4 = incomingFD
	}
	proc, err := backend.StartProcess(cmd, "qemu", filepath.Join(spec.Dir, VMMLog))
	if err != nil {
		stopShares()
		return nil, err
	}
	go func() {
		select {
		case <-proc.Done():
		case <-sharesDied:
			noteVMMLog(spec.Dir, "mvm: virtiofsd exited (see "+VirtiofsdLog+"); stopping the VM")
			proc.Kill()
		}
		stopShares()
	}()
	return &Machine{Process: proc, dir: spec.Dir, accel: accel, incoming: spec.Incoming != ""}, nil
}

func (m *Machine) Accel() string       { return m.accel }
func (m *Machine) ConsolePath() string { return filepath.Join(m.dir, ConsoleLog) }

// dialUnix waits for QEMU to create the socket name in the sandbox
// directory and connects.
func (m *Machine) dialUnix(ctx context.Context, name string) (net.Conn, error) {
	for {
		conn, err := backend.DialUnix(ctx, m.dir, name)
		if err == nil {
			return conn, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect %s: %w", name, ctx.Err())
		case <-m.Done():
			return nil, fmt.Errorf("connect %s: vmm exited: %v", name, m.ExitErr())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (m *Machine) DialChannel(ctx context.Context) (net.Conn, error) {
	return m.dialUnix(ctx, ChannelSocket)
}

func (m *Machine) monitor(ctx context.Context) (*qmp, error) {
	m.mu.Lock()
	q := m.qmp
	m.mu.Unlock()
	if q != nil {
		return q, nil
	}
	conn, err := m.dialUnix(ctx, QMPSocket)
	if err != nil {
		return nil, err
	}
	q, err = newQMP(ctx, conn)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.qmp != nil {
		q.close()
		return m.qmp, nil
	}
	m.qmp = q
	return q, nil
}

func (m *Machine) Pause(ctx context.Context) error {
	q, err := m.monitor(ctx)
	if err != nil {
		return err
	}
	_, err = q.run(ctx, "stop", nil)
	return err
}

func (m *Machine) Resume(ctx context.Context) error {
	q, err := m.monitor(ctx)
	if err != nil {
		return err
	}
	_, err = q.run(ctx, "cont", nil)
	return err
}

// Stop asks QEMU to quit over QMP and kills it when ctx ends first.
func (m *Machine) Stop(ctx context.Context) error {
	select {
	case <-m.Done():
		return nil
	default:
	}
	if q, err := m.monitor(ctx); err == nil {
		q.run(ctx, "quit", nil)
	}
	select {
	case <-m.Done():
		return nil
	case <-ctx.Done():
		return m.Kill()
	}
}
