package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// guestModules are loaded by the agent at boot, in dependency order.
var guestModules = []string{"virtio_mmio", "virtio_console", "virtio_blk", "overlay", "virtio_net", "virtiofs"}

// VsockModules are the extra modules a Firecracker guest needs: its agent
// channel is virtio-vsock (vmw_vsock_virtio_transport pulls in vsock and
// the common transport). They are not in guestModules so that the default
// (QEMU) initramfs does not grow; the initramfs gets them only when
// MVM_BACKEND=firecracker.
var VsockModules = []string{"vmw_vsock_virtio_transport"}

// bootImage is what a VM needs to boot one image.
type bootImage struct {
	ref    sandbox.ImageRef
	kernel *image.Kernel
	initrd string
	// initrdDigest is the initramfs's digest (it holds the agent).
	initrdDigest string
	rootfs       string // read-only root filesystem image ("" boots the initramfs alone)
	profile      string // "dev" or "sealed"
	artifact     *image.Artifact
}

// BusyboxPath is the static busybox put into the minimal image.
func BusyboxPath() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if _, err := exec.LookPath(p); err == nil {
			return p, nil
		}
	}
	return "", errdefs.Errorf(errdefs.KindUnavailable, "busybox not found: run `mvmctl setup` (or apt-get install busybox-static)")
}

// initramfs returns the shared initramfs: the agent as /init, busybox, and
// the modules the guest loads (which depend on the backend).
func (r *Runtime) initramfs(k *image.Kernel, backend string) (string, string, error) {
	if err := r.CheckAgent(); err != nil {
		return "", "", err
	}
	bb, err := BusyboxPath()
	if err != nil {
		return "", "", err
	}
	return image.EnsureInitramfs(r.Dirs, image.InitramfsSpec{
		Agent: r.Agent, Busybox: bb, Kernel: k, Modules: initramfsModules(backend),
	})
}

// initramfsModules is guestModules, plus VsockModules for Firecracker.
func initramfsModules(backend string) []string {
	if backend == plan.BackendFirecracker {
		return append(append([]string(nil), guestModules...), VsockModules...)
	}
	return guestModules
}

// IsBuildDir reports whether name is a directory holding an mvm.toml.
func IsBuildDir(name string) bool {
	st, err := os.Stat(filepath.Join(name, "mvm.toml"))
	return err == nil && !st.IsDir()
}

// resolveImage turns an image name into boot artifacts: "" and "minimal"
// boot the initramfs alone; a directory with mvm.toml is built (a cache hit
// when unchanged); a template is built on first use; otherwise the name is
// an artifact digest (prefix) or a manifest name from `mvmctl build`.
// Without buildDir a directory is never built, whatever the name.
func (r *Runtime) resolveImage(ctx context.Context, name, backend string, buildDir bool, pull image.PullOptions, progress func(image.Event)) (*bootImage, error) {
	k, err := image.FindKernel(r.Dirs)
	if err != nil {
		return nil, errdefs.Unavailable(err)
	}
	initrd, digest, err := r.initramfs(k, backend)
	if err != nil {
		return nil, fmt.Errorf("prepare initramfs: %w", err)
	}
	if name == "" || name == "minimal" {
		return &bootImage{
			ref:    sandbox.ImageRef{Name: "minimal", Digest: digest, ImageProfile: plan.ImageDev},
			kernel: k, initrd: initrd, initrdDigest: digest, profile: "dev",
		}, nil
	}
	var art *image.Artifact
	if buildDir && IsBuildDir(name) {
		art, err = image.Build(ctx, r.Dirs, name, "", image.BuildOptions{Pull: pull}, progress)
	} else {
		art, err = image.ResolveImage(r.Dirs, name)
		var nb *image.NotBuiltError
		var np *image.NotPulledError
		if errors.As(err, &nb) {
			art, err = image.Build(ctx, r.Dirs, "", nb.Template, image.BuildOptions{}, progress)
		} else if errors.As(err, &np) || err == nil && pull.RequireDigest && art.OCI != nil && !strings.Contains(name, "@") {
			// a tag is pulled on first use; with digests required it
			// is resolved again so that the pin is checked
			art, err = image.Pull(ctx, r.Dirs, name, pull, progress, nil)
		}
	}
	if err != nil {
		return nil, imageError(err)
	}
	label := art.Name
	if label == "" && art.OCI != nil {
		label = art.OCI.Ref
	}
	if label == "" {
		label = art.Template
	}
	ref := sandbox.ImageRef{Name: label, Digest: art.Digest, ImageProfile: imageProfile(art.Profile),
		Command: art.Command, Entrypoint: art.Entrypoint}
	if art.OCI != nil {
		ref.OCIDigest, ref.ExposedPorts = art.OCI.Digest, art.OCI.Config.ExposedPorts
	}
	return &bootImage{
		ref:    ref,
		kernel: k, initrd: initrd, initrdDigest: digest, rootfs: art.Path, profile: imageProfile(art.Profile), artifact: art,
	}, nil
}

// imageProfile is an artifact's profile; an artifact that names none is a
// development image.
func imageProfile(p string) string {
	if p == "" {
		return plan.ImageDev
	}
	return p
}

// kernelDigest is the digest of the kernel booted ("" while unresolved).
func (img *bootImage) kernelDigest() string {
	if img.kernel == nil {
		return ""
	}
	return img.kernel.Digest
}

// DefaultDiskMiB is the size of a sandbox's writable layer when neither
// the manifest nor --disk sets it. The file is sparse: only what the guest
// writes takes space.
const DefaultDiskMiB = 4096

// vmDisks creates the per-sandbox writable layer and returns the disks of
// a rootfs boot (see cmdline for its kernel arguments).
func (img *bootImage) vmDisks(ctx context.Context, dir string, diskMiB int) ([]backend.Disk, error) {
	if img.rootfs == "" {
		return nil, nil
	}
	upper := filepath.Join(dir, sandbox.UpperDisk)
	os.Remove(upper) // a failed restore's copy
	f, err := os.OpenFile(upper, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(int64(diskMiB) << 20)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("create writable layer: %w", err)
	}
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0",
		"-E", "lazy_itable_init=1,nodiscard", "-L", "mvmupper", upper, strconv.Itoa(diskMiB)+"M").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("format writable layer (mkfs.ext4): %v: %s; is the disk full? `df -h %s`", err, strings.TrimSpace(string(out)), dir)
	}
	return img.restoredDisks(dir), nil
}

// cmdline is the kernel command line of the image's root ("" for an
// initramfs-only image).
func (img *bootImage) cmdline() string {
	if img.rootfs == "" {
		return ""
	}
	return "mvm.root=/dev/vda mvm.rootfstype=ext4 mvm.upper=/dev/vdb"
}

// restoredDisks are the disks of a rootfs boot, the writable layer being
// dir's (formatted by vmDisks, or a ready snapshot's copy).
func (img *bootImage) restoredDisks(dir string) []backend.Disk {
	if img.rootfs == "" {
		return nil
	}
	return []backend.Disk{{Path: img.rootfs, ReadOnly: true}, {Path: filepath.Join(dir, sandbox.UpperDisk)}}
}
