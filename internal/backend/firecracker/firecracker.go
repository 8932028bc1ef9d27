// Package firecracker runs microVMs with Firecracker on KVM hosts. It
// talks to Firecracker's HTTP API on a unix socket directly (no SDK),
// gives the guest a virtio-vsock device for the agent channel and reaches
// it through Firecracker's hybrid vsock ("CONNECT <port>" on a host unix
// socket). There is no NIC: networking is not supported by this backend
// yet.
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/backend"
)

// File names inside the sandbox directory.
const (
	APISocket   = "fc.sock"
	VsockSocket = "vsock.sock"
	ConsoleLog  = "console.log"
	VMMLog      = "vmm.log"
)

// GuestCID is the vsock context id of every guest: each VM has its own
// device and host socket, so the id never has to be unique.
const GuestCID = 3

// Unavailable is the message given when Firecracker cannot run here.
const Unavailable = "firecracker needs KVM (/dev/kvm usable) and the firecracker binary on PATH or in MVM_FIRECRACKER; use the default qemu backend"

// Binary is the Firecracker executable; MVM_FIRECRACKER overrides it.
func Binary() string {
	if v := os.Getenv("MVM_FIRECRACKER"); v != "" {
		return v
	}
	return "firecracker"
}

// LookBinary resolves Binary to a path, or explains what is missing.
func LookBinary() (string, error) {
	bin, err := exec.LookPath(Binary())
	if err != nil {
		return "", fmt.Errorf("%s (%s not found)", Unavailable, Binary())
	}
	return bin, nil
}

// KernelCmdline is the command line every guest gets before the
// sandbox-specific part: reboot=k makes a guest reboot (the agent's power
// off) reset through the i8042 controller, which ends Firecracker;
// panic=1 turns a guest panic into that reboot; pci=off because all
// devices are virtio-mmio.
const KernelCmdline = "console=ttyS0 reboot=k panic=1 pci=off"

// Args returns Firecracker's argument list for the VM named name. --id
// carries the name (the sandbox's VMM tag) on the command line, so that
// the process can be recognised by pid (sandbox.ProcessAlive). Paths are
// relative to Firecracker's working directory, the sandbox directory, so
// that socket paths fit a socket address however long that directory's
// path is.
func Args(name string) []string {
	return []string{
		"--id", name,
		"--api-sock", APISocket,
		"--log-path", VMMLog,
		"--level", "Warning",
	}
}

// validID reports whether Firecracker accepts id as its instance id:
// 1 to 64 ASCII letters, digits and hyphens.
func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Machine is a running Firecracker process.
type Machine struct {
	*backend.Process
	dir string
	api *apiClient
	// incoming is the spec of a machine started to load a saved state
	// (Spec.Incoming), nil for a boot.
	incoming *backend.Spec
}

var _ backend.Machine = (*Machine)(nil)

// check validates what Firecracker is given before anything is started.
func check(spec backend.Spec) error {
	if spec.CPUs < 1 || spec.CPUs > 32 || spec.MemoryMiB < 64 {
		return fmt.Errorf("firecracker: need 1 to 32 cpus and at least 64 MiB (got %d, %d)", spec.CPUs, spec.MemoryMiB)
	}
	if spec.Network != nil {
		return errors.New("firecracker: networking is not supported by the firecracker backend yet; run without network or use the default qemu backend")
	}
	if len(spec.Shares) > 0 {
		return errors.New("firecracker: host directories (-v DIR:PATH) are not supported by the firecracker backend (it has no virtiofs); use the default qemu backend")
	}
	for _, d := range spec.Disks {
		if d.Serial != "" {
			return errors.New("firecracker: volumes are not supported by the firecracker backend yet; use the default qemu backend")
		}
	}
	if spec.Kernel == "" {
		return errors.New("firecracker: no kernel")
	}
	if !validID(spec.Name) {
		return fmt.Errorf("firecracker: VM name %q is not a valid instance id (1 to 64 letters, digits and hyphens)", spec.Name)
	}
	return nil
}

// Start launches Firecracker for spec, configures it over its API socket
// and starts the guest. The VMM dies with the calling process
// (PR_SET_PDEATHSIG). Start does not check for KVM: Firecracker reports
// that itself, and the supervisor checks before choosing this backend.
func Start(ctx context.Context, spec backend.Spec) (*Machine, error) {
	if err := check(spec); err != nil {
		return nil, err
	}
	if spec.Incoming != "" {
		if err := checkIncoming(spec.Incoming); err != nil {
			return nil, err
		}
	}
	bin, err := LookBinary()
	if err != nil {
		return nil, err
	}
	m, err := launch(bin, spec.Name, spec.Dir, spec.Console)
	if err != nil {
		return nil, err
	}
	if spec.Incoming != "" {
		// No boot configuration: a snapshot loads only into a fresh
		// Firecracker (CompleteIncoming).
		if err := m.waitSocket(ctx, APISocket); err != nil {
			m.Kill()
			return nil, err
		}
		in := spec
		in.Console = nil
		m.incoming = &in
		return m, nil
	}
	if err := m.configure(ctx, spec); err != nil {
		m.Kill()
		return nil, err
	}
	return m, nil
}

// launch starts the Firecracker process: stdout (the guest's serial
// console, which Firecracker writes to its standard output) goes to
// console.log, its log and standard error to vmm.log.
func launch(bin, name, dir string, console *os.File) (*Machine, error) {
	// Firecracker refuses to start on a stale API socket; the sandbox
	// directory is private, so whatever is there is ours from a past run.
	for _, name := range []string{APISocket, VsockSocket} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	// --log-path must name an existing file.
	logf, err := os.OpenFile(filepath.Join(dir, VMMLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	conf := console
	if conf == nil {
		f, err := os.OpenFile(filepath.Join(dir, ConsoleLog), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		conf = f
	}
	cmd := exec.Command(bin, Args(name)...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = conf, logf
	proc, err := backend.StartProcess(cmd, "firecracker", filepath.Join(dir, VMMLog))
	if err != nil {
		return nil, err
	}
	return &Machine{Process: proc, dir: dir, api: newAPIClient(dir, APISocket)}, nil
}

// configure waits for the API socket and sends the boot configuration.
func (m *Machine) configure(ctx context.Context, spec backend.Spec) error {
	if err := m.waitSocket(ctx, APISocket); err != nil {
		return err
	}
	for _, r := range BootRequests(spec) {
		if err := m.api.do(ctx, r.Method, r.Path, r.Body); err != nil {
			select {
			case <-m.Done():
				return fmt.Errorf("%v (vmm exited: %v)", err, m.ExitErr())
			default:
			}
			return err
		}
	}
	return nil
}

func (m *Machine) Accel() string       { return "kvm" }
func (m *Machine) ConsolePath() string { return filepath.Join(m.dir, ConsoleLog) }

// waitSocket waits until Firecracker accepts connections on the socket
// name in the sandbox directory.
func (m *Machine) waitSocket(ctx context.Context, name string) error {
	for {
		conn, err := backend.DialUnix(ctx, m.dir, name)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("firecracker: connect %s: %w", name, ctx.Err())
		case <-m.Done():
			return fmt.Errorf("firecracker: connect %s: vmm exited: %v", name, m.ExitErr())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// DialChannel connects to the agent's vsock port through Firecracker's
// hybrid vsock socket, waiting while the guest has not bound it yet.
func (m *Machine) DialChannel(ctx context.Context) (net.Conn, error) {
	return dialVsock(ctx, m.dir, VsockSocket, agentapi.VsockPort, m.Done())
}

func (m *Machine) Pause(ctx context.Context) error {
	return m.api.do(ctx, "PATCH", "/vm", vmState{State: "Paused"})
}

func (m *Machine) Resume(ctx context.Context) error {
	return m.api.do(ctx, "PATCH", "/vm", vmState{State: "Resumed"})
}

// Stop sends the guest Ctrl+Alt+Del (the kernel reboots, and with
// reboot=k Firecracker exits) and kills Firecracker when ctx ends first.
func (m *Machine) Stop(ctx context.Context) error {
	select {
	case <-m.Done():
		return nil
	default:
	}
	m.api.do(ctx, "PUT", "/actions", action{ActionType: "SendCtrlAltDel"})
	select {
	case <-m.Done():
		return nil
	case <-ctx.Done():
		return m.Kill()
	}
}
