// Package agent is mvm-agent, the guest's PID 1: it prepares the guest
// (mounts, modules, root filesystem, hostname), reaps orphans and serves the
// agent protocol on the guest channel.
package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/guestnet"
	"golang.org/x/sys/unix"
)

// ImageConfig is /etc/mvm/image.json, written by the image builder.
type ImageConfig struct {
	Profile string            `json:"profile"` // "dev" (default) or "sealed"
	Env     map[string]string `json:"env,omitempty"`
	Command []string          `json:"command,omitempty"`
	Workdir string            `json:"workdir,omitempty"`
	// User is who processes run as (an OCI image's USER, resolved at
	// build time); nil is root.
	User *ImageUser `json:"user,omitempty"`
}

// ImageUser is a numeric user and group, and the user's home directory.
type ImageUser struct {
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	Home string `json:"home,omitempty"`
}

// bootParams are the mvm.* keys of the kernel command line.
type bootParams struct {
	hostname string
	root     string // block device of the image's root filesystem
	rootType string
	upper    string // block device of the per-sandbox writable layer
	// console is mvm.console=1: the admitted plan allows a console (an
	// interactive terminal). Absent or anything else means no.
	console bool
}

func parseCmdline(cmdline string) bootParams {
	p := bootParams{hostname: "mvm", rootType: "ext4"}
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "mvm.hostname":
			p.hostname = v
		case "mvm.root":
			p.root = v
		case "mvm.rootfstype":
			p.rootType = v
		case "mvm.upper":
			p.upper = v
		case "mvm.console":
			p.console = v == "1"
		}
	}
	return p
}

// uptimeMS reads the guest clock: milliseconds since the kernel started.
func uptimeMS() int64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	s, _ := strconv.ParseFloat(f[0], 64)
	return int64(s * 1000)
}

type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// mountEarly mounts the pseudo filesystems PID 1 needs.
func mountEarly() error {
	mounts := []mountSpec{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	}
	for _, m := range mounts {
		if err := mountOne(m); err != nil {
			return err
		}
	}
	return mountRuntime()
}

// mountRuntime mounts what lives under /dev, /tmp and /run; it runs again
// after a switch to a new root.
func mountRuntime() error {
	for _, d := range []string{"/dev/pts", "/dev/shm"} {
		os.MkdirAll(d, 0o755)
	}
	mounts := []mountSpec{
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	}
	for _, m := range mounts {
		if err := mountOne(m); err != nil {
			return err
		}
	}
	if !isMountpoint("/tmp") {
		if err := mountOne(mountSpec{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"}); err != nil {
			return err
		}
	}
	if _, err := os.Lstat("/dev/ptmx"); err != nil {
		os.Symlink("pts/ptmx", "/dev/ptmx")
	}
	for name, target := range map[string]string{"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2"} {
		if _, err := os.Lstat(name); err != nil {
			os.Symlink(target, name)
		}
	}
	return nil
}

func mountOne(m mountSpec) error {
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", m.target, err)
	}
	if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
	}
	return nil
}

func isMountpoint(path string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(path, &st) != nil || unix.Stat(filepath.Dir(path), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// moduleParams collects "module.param=value" options from the kernel
// command line, keyed by module name ('-' and '_' equal), as modprobe
// would: the kernel applies such options only to built-in code, so a
// module loaded later (virtio_mmio on Firecracker, whose devices are
// described as virtio_mmio.device=...) must be given them explicitly.
func moduleParams(cmdline string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.Fields(cmdline) {
		k, _, hasValue := strings.Cut(f, "=")
		mod, param, ok := strings.Cut(k, ".")
		if !ok || !hasValue || mod == "" || param == "" || strings.HasPrefix(mod, "mvm") {
			continue
		}
		mod = strings.ReplaceAll(mod, "-", "_")
		opt := strings.TrimPrefix(f, k[:len(mod)]+".")
		if out[mod] != "" {
			out[mod] += " "
		}
		out[mod] += opt
	}
	return out
}

// networkModules are needed only by a guest with a network device.
var networkModules = map[string]bool{"virtio_net": true, "net_failover": true, "failover": true}

// sharedDirModules are needed only by a guest given host directories
// (mvm.virtiofs=1).
var sharedDirModules = map[string]bool{"fuse": true, "virtiofs": true}

// loadModules loads, in order, the kernel modules listed in /etc/mvm/modules.
func loadModules() error {
	cmdline, _ := os.ReadFile("/proc/cmdline")
	params := moduleParams(string(cmdline))
	// The NIC's driver is in every initramfs but loaded only for a guest
	// that has a network (mvm.net=...): loading modules costs boot time
	// under emulation, and most sandboxes have no network device.
	withNet := strings.Contains(string(cmdline), guestnet.KernelArgKey+"=")
	withFS := strings.Contains(string(cmdline), "mvm.virtiofs=1")
	b, err := os.ReadFile("/etc/mvm/modules")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		path := strings.TrimSpace(sc.Text())
		if path == "" || strings.HasPrefix(path, "#") {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("module %s: %w", path, err)
		}
		name := strings.ReplaceAll(strings.TrimSuffix(filepath.Base(path), ".ko"), "-", "_")
		if (networkModules[name] && !withNet) || (sharedDirModules[name] && !withFS) {
			f.Close()
			continue
		}
		err = unix.FinitModule(int(f.Fd()), params[name], 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load module %s: %w", filepath.Base(path), err)
		}
	}
	return nil
}

// waitForFile polls for a device node that devtmpfs creates asynchronously.
func waitForFile(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %s", path, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// switchRoot mounts the image's root filesystem read-only, stacks the
// per-sandbox writable disk over it and makes the result the root.
func switchRoot(p bootParams) error {
	if err := waitForFile(p.root, 10*time.Second); err != nil {
		return err
	}
	os.MkdirAll("/mnt/lower", 0o755)
	os.MkdirAll("/mnt/rw", 0o755)
	os.MkdirAll("/newroot", 0o755)
	if err := unix.Mount(p.root, "/mnt/lower", p.rootType, unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount root %s (%s): %w", p.root, p.rootType, err)
	}
	if p.upper != "" {
		if err := waitForFile(p.upper, 10*time.Second); err != nil {
			return err
		}
		if err := unix.Mount(p.upper, "/mnt/rw", "ext4", 0, ""); err != nil {
			return fmt.Errorf("mount writable layer %s: %w", p.upper, err)
		}
	} else if err := unix.Mount("tmpfs", "/mnt/rw", "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount writable tmpfs: %w", err)
	}
	os.MkdirAll("/mnt/rw/upper", 0o755)
	os.MkdirAll("/mnt/rw/work", 0o755)
	opts := "lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work"
	if err := unix.Mount("overlay", "/newroot", "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay root: %w", err)
	}
	for _, d := range []string{"proc", "sys", "dev"} {
		os.MkdirAll("/newroot/"+d, 0o755)
		if err := unix.Mount("/"+d, "/newroot/"+d, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move /%s: %w", d, err)
		}
	}
	if err := os.Chdir("/newroot"); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move new root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	return mountRuntime()
}

func readImageConfig() ImageConfig {
	cfg := ImageConfig{Profile: "dev"}
	b, err := os.ReadFile("/etc/mvm/image.json")
	if err != nil {
		return cfg
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		log.Printf("ignoring malformed /etc/mvm/image.json: %v", err)
	}
	if cfg.Profile == "" {
		cfg.Profile = "dev"
	}
	return cfg
}
