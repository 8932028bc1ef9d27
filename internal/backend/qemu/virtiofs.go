package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
)

// VirtiofsdLog receives the output of the sandbox's virtiofsd processes.
const VirtiofsdLog = "virtiofsd.log"

// Virtiofsd finds the virtiofs file server: MVM_VIRTIOFSD, else the one
// Debian's qemu-system-common ships (/usr/lib/qemu/virtiofsd, QEMU 7.2),
// else /usr/libexec/virtiofsd or virtiofsd on PATH.
func Virtiofsd() (string, error) {
	if v := os.Getenv("MVM_VIRTIOFSD"); v != "" {
		return v, nil
	}
	for _, p := range []string{"/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"} {
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath("virtiofsd"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("host directories need virtiofsd, which was not found: run `mvmctl setup` (or apt-get install qemu-system-common) or set MVM_VIRTIOFSD")
}

// ShareSupport reports whether this host can share directories: the C
// virtiofsd's namespace sandbox and the read-only bind mount under it need
// root, and virtiofsd must exist.
func ShareSupport() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("host directories (-v DIR:PATH) need root on this host: virtiofsd confines itself with mount namespaces; run mvmctl as root or use a volume (-v NAME:PATH)")
	}
	_, err := Virtiofsd()
	return err
}

func shareSocket(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("fs%d.sock", i)) }

// shareArgs are QEMU's arguments for the shares: guest RAM as shared
// memory (vhost-user maps it into virtiofsd) and one vhost-user-fs device
// per share.
func shareArgs(spec backend.Spec) []string {
	if len(spec.Shares) == 0 {
		return nil
	}
	// libvhost-user (virtiofsd) refuses legacy virtio, which is what
	// microvm's virtio-mmio transport offers unless told otherwise.
	args := []string{"-global", "virtio-mmio.force-legacy=false",
		"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", spec.MemoryMiB)}
	for i, s := range spec.Shares {
		id := fmt.Sprintf("fs%d", i)
		args = append(args,
			"-chardev", "socket,id="+id+",path="+shareSocket(spec.Dir, i),
			"-device", "vhost-user-fs-device,chardev="+id+",tag="+s.Tag)
	}
	return args
}

// virtiofsdCommand runs virtiofsd for one share in a private mount
// namespace where the directory is bind-mounted onto itself nodev,nosuid
// (and ro for a read-only share), so the host enforces the mode and device
// nodes in the share are never opened as devices. virtiofsd itself
// pivot_roots into the directory (sandbox=namespace), so "..", absolute
// symlinks and bind tricks resolve inside it, and it runs without
// CAP_MKNOD, so the guest cannot create device nodes.
//
// The listening socket is passed as fd 3 (--fd), not by path: virtiofsd
// locks a pid file named after its --socket-path, and every sandbox's
// socket has the same relative path (fs0.sock in its own directory), so
// by path a second sandbox with a share could not start while the first
// ran.
func virtiofsdCommand(bin string, s backend.Share, listener *os.File) *exec.Cmd {
	opts := "nodev,nosuid"
	if s.ReadOnly {
		opts = "ro," + opts
	}
	script := `mount --make-rprivate / && mount --bind -o ` + opts + ` -- "$1" "$1" && shift && exec "$@"`
	args := []string{"--mount", "--", "/bin/sh", "-c", script, "sh", s.HostPath,
		bin, "--fd=3", "-o", "source=" + s.HostPath,
		"-o", "sandbox=namespace", "-o", "cache=auto", "-o", "modcaps=-mknod", "-o", "log_level=warn"}
	cmd := exec.Command("unshare", args...)
	cmd.ExtraFiles = []*os.File{listener}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// startShares starts one virtiofsd per share and waits for its socket.
// The returned stop kills them all; died is closed when any of them exits
// (the guest's file system is then gone, so the VM must not go on).
func startShares(ctx context.Context, spec backend.Spec) (stop func(), died <-chan struct{}, err error) {
	if len(spec.Shares) == 0 {
		return func() {}, nil, nil
	}
	dead := make(chan struct{})
	var deadOnce sync.Once
	if err := ShareSupport(); err != nil {
		return nil, nil, err
	}
	bin, err := Virtiofsd()
	if err != nil {
		return nil, nil, err
	}
	logf, err := os.OpenFile(filepath.Join(spec.Dir, VirtiofsdLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, err
	}
	defer logf.Close()
	var cmds []*exec.Cmd
	stop = func() {
		for _, c := range cmds {
			c.Process.Kill()
		}
	}
	for i, s := range spec.Shares {
		sock := shareSocket(spec.Dir, i)
		os.Remove(sock)
		lf, err := listenFile(sock)
		if err != nil {
			stop()
			return nil, nil, fmt.Errorf("virtiofsd socket for %s: %w", s.HostPath, err)
		}
		cmd := virtiofsdCommand(bin, s, lf)
		cmd.Stdout, cmd.Stderr = logf, logf
		err = cmd.Start()
		lf.Close() // virtiofsd has its own copy
		if err != nil {
			stop()
			return nil, nil, fmt.Errorf("start virtiofsd for %s: %w", s.HostPath, err)
		}
		cmds = append(cmds, cmd)
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited); deadOnce.Do(func() { close(dead) }) }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			select {
			case <-exited:
				stop()
				b, _ := os.ReadFile(filepath.Join(spec.Dir, VirtiofsdLog))
				return nil, nil, fmt.Errorf("virtiofsd for %s exited: %s", s.HostPath, strings.TrimSpace(string(b)))
			case <-ctx.Done():
				stop()
				return nil, nil, ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				stop()
				return nil, nil, fmt.Errorf("virtiofsd for %s did not create its socket within 10s", s.HostPath)
			}
		}
	}
	return stop, dead, nil
}

// listenFile creates a listening unix socket at path and returns it as a
// file for a child to inherit; the socket file stays when it is closed.
func listenFile(path string) (*os.File, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	return l.File()
}
