package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/runtime/v2/shim"
)

// RuntimeName is the runtime type containerd knows the shim by; it maps to
// the binary name containerd-shim-mvm-v2.
const RuntimeName = "io.containerd.mvm.v2"

// Manager is the shim's bootstrap (containerd's shim.Manager): `start`
// spawns the long-lived shim and prints its address; `delete` cleans up
// after a shim that is gone.
type Manager struct {
	// Down takes a sandbox down by id (it is not an error when it is gone).
	Down func(ctx context.Context, sandboxID string) error
}

// Name is the runtime type.
func (Manager) Name() string { return RuntimeName }

// Start spawns the shim server for one container, listening on a socket
// whose address is derived from containerd's address and the container id,
// and returns that address. It runs with the bundle as its working
// directory, as containerd starts it.
func (m Manager) Start(ctx context.Context, id string, opts shim.StartOpts) (_ string, retErr error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	address, err := shim.SocketAddress(ctx, opts.Address, id)
	if err != nil {
		return "", err
	}
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("create shim socket: %w", err)
		}
		if shim.CanConnect(address) {
			// A shim already serves this container.
			if err := shim.WriteAddress("address", address); err != nil {
				return "", err
			}
			return address, nil
		}
		if err := shim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("remove stale shim socket: %w", err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return "", fmt.Errorf("create shim socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			shim.RemoveSocket(address)
		}
	}()
	if err := shim.WriteAddress("address", address); err != nil {
		return "", err
	}
	f, err := socket.File()
	if err != nil {
		return "", err
	}
	defer f.Close()
	args := []string{"-namespace", ns, "-id", id, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = os.Environ()
	cmd.ExtraFiles = []*os.File{f} // fd 3: the socket the shim serves
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start shim: %w", err)
	}
	go cmd.Wait()
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		cmd.Process.Kill()
		return "", fmt.Errorf("adjust the shim's OOM score: %w", err)
	}
	return address, nil
}

// Stop is `delete`: containerd runs it, in the bundle directory, after
// the shim is gone (killed, crashed) or when a create failed half-way. It
// takes the VM down and unmounts the rootfs, so nothing is left.
func (m Manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	cwd, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	if err := CleanupBundle(ctx, cwd, m.Down); err != nil {
		return shim.StopStatus{}, err
	}
	return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}, nil
}

// CleanupBundle undoes what a shim set up for a bundle, from the state
// file it left there.
func CleanupBundle(ctx context.Context, bundle string, down func(context.Context, string) error) error {
	path := filepath.Join(bundle, StateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		// Nothing was set up, or it was already cleaned up; a rootfs
		// mounted by containerd's conventions may still be there.
		unmountIfMounted(filepath.Join(bundle, "rootfs"))
		return nil
	}
	if err != nil {
		return err
	}
	var st BundleState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if st.SandboxID != "" && down != nil {
		if err := down(ctx, st.SandboxID); err != nil {
			return fmt.Errorf("take down sandbox %s: %w", st.SandboxID, err)
		}
	}
	if st.Mounted && st.Rootfs != "" {
		if err := mount.UnmountAll(st.Rootfs, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", st.Rootfs, err)
		}
	}
	return os.Remove(path)
}

func unmountIfMounted(dir string) {
	if _, err := os.Stat(dir); err == nil {
		mount.UnmountAll(dir, 0)
	}
}
