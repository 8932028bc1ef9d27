package runtime

import (
	"fmt"
	"os/exec"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// guestModules are loaded by the agent at boot, in dependency order.
var guestModules = []string{"virtio_mmio", "virtio_console", "virtio_blk", "overlay"}

// bootImage is what a VM needs to boot one image.
type bootImage struct {
	ref     sandbox.ImageRef
	kernel  *image.Kernel
	initrd  string
	disks   []backend.Disk
	cmdline string
}

// BusyboxPath is the static busybox put into the minimal image.
func BusyboxPath() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if _, err := exec.LookPath(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("busybox not found: run `mvmctl setup` (or apt-get install busybox-static)")
}

// initramfs returns the shared initramfs: the agent as /init, busybox, and
// the modules the guest loads.
func (r *Runtime) initramfs(k *image.Kernel) (string, string, error) {
	if err := r.CheckAgent(); err != nil {
		return "", "", err
	}
	bb, err := BusyboxPath()
	if err != nil {
		return "", "", err
	}
	return image.EnsureInitramfs(r.Dirs, image.InitramfsSpec{
		Agent: r.Agent, Busybox: bb, Kernel: k, Modules: guestModules,
	})
}

// resolveImage turns an image name into boot artifacts. "" and "minimal"
// boot the initramfs alone.
func (r *Runtime) resolveImage(name string) (*bootImage, error) {
	k, err := image.FindKernel(r.Dirs)
	if err != nil {
		return nil, err
	}
	initrd, digest, err := r.initramfs(k)
	if err != nil {
		return nil, fmt.Errorf("prepare initramfs: %w", err)
	}
	if name == "" || name == "minimal" {
		return &bootImage{
			ref:    sandbox.ImageRef{Name: "minimal", Digest: digest},
			kernel: k, initrd: initrd,
		}, nil
	}
	return nil, fmt.Errorf("unknown image %q: this build boots only the built-in \"minimal\" image", name)
}
