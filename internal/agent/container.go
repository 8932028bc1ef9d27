package agent

// Containers. A bundle sandbox's init (BundleProcess.init) is started in
// a mount namespace of its own, and in PID, UTS and IPC namespaces of its
// own as its spec asks (ContainerConfig.namespaces; absent: all three).
// The exec helper, as the init, mounts the spec's file systems inside the
// root directory, pivots into it (the agent's root is then detached from
// the container's mount namespace), masks and write-protects the spec's
// paths, and executes the process. Every other process of the container
// joins the running init's namespaces (setns through /proc/PID/ns/*) and
// its root. The network namespace stays the VM's: the VM's only network
// is the container's (docs/kubernetes.md).

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"golang.org/x/sys/unix"
)

const (
	maxMounts       = 64
	maxMountOptions = 64
	maxMountOption  = 256
	maxSpecPaths    = 128
	maxSpecPath     = 1024
	// nsRootDir is where the init's helper binds the agent's root tree so
	// that it stands on a mount pivot_root can move (the initramfs, the
	// agent's root when it has no disk, is not one).
	nsRootDir = "/run/mvm/nsroot"
)

// helperMount is one mount of the container, parsed.
type helperMount struct {
	Dest  string  `json:"dest"`
	Type  string  `json:"type"`
	Flags uintptr `json:"flags"`
	Data  string  `json:"data,omitempty"`
}

// helperContainer is what the init's helper sets up.
type helperContainer struct {
	// Cloneflags are the namespaces of its own (CLONE_NEWNS always).
	Cloneflags   uintptr       `json:"cloneflags"`
	Mounts       []helperMount `json:"mounts"`
	Masked       []string      `json:"masked,omitempty"`
	Readonly     []string      `json:"readonly,omitempty"`
	ReadOnlyRoot bool          `json:"read_only_root,omitempty"`
}

// defaultContainer is what an init gets without a ContainerConfig: the
// mounts, masked and read-only paths of containerd's default spec, and
// mvm's /tmp.
func defaultContainer() *pb.ContainerConfig {
	m := func(dest, typ string, opts ...string) *pb.ContainerMount {
		return &pb.ContainerMount{Destination: dest, Type: typ, Source: typ, Options: opts}
	}
	return &pb.ContainerConfig{
		Namespaces: []string{"pid", "uts", "ipc"},
		Mounts: []*pb.ContainerMount{
			m("/proc", "proc", "nosuid", "noexec", "nodev"),
			m("/dev", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
			m("/dev/pts", "devpts", "nosuid", "noexec"),
			m("/dev/shm", "tmpfs", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
			m("/dev/mqueue", "mqueue", "nosuid", "noexec", "nodev"),
			m("/sys", "sysfs", "nosuid", "noexec", "nodev", "ro"),
			m("/tmp", "tmpfs", "nosuid", "nodev", "mode=1777"),
		},
		MaskedPaths: []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
			"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"},
		ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
	}
}

var mountFlagOpts = map[string]struct {
	clear bool
	flag  uintptr
}{
	"ro": {false, unix.MS_RDONLY}, "rw": {true, unix.MS_RDONLY},
	"nosuid": {false, unix.MS_NOSUID}, "suid": {true, unix.MS_NOSUID},
	"nodev": {false, unix.MS_NODEV}, "dev": {true, unix.MS_NODEV},
	"noexec": {false, unix.MS_NOEXEC}, "exec": {true, unix.MS_NOEXEC},
	"sync": {false, unix.MS_SYNCHRONOUS}, "async": {true, unix.MS_SYNCHRONOUS},
	"dirsync": {false, unix.MS_DIRSYNC},
	"noatime": {false, unix.MS_NOATIME}, "atime": {true, unix.MS_NOATIME},
	"nodiratime": {false, unix.MS_NODIRATIME}, "diratime": {true, unix.MS_NODIRATIME},
	"relatime": {false, unix.MS_RELATIME}, "norelatime": {true, unix.MS_RELATIME},
	"strictatime": {false, unix.MS_STRICTATIME}, "nostrictatime": {true, unix.MS_STRICTATIME},
}

// Propagation options do not apply: every mount of the container's
// namespace is private.
var propagationOpts = map[string]bool{"private": true, "rprivate": true, "shared": true, "rshared": true,
	"slave": true, "rslave": true, "unbindable": true, "runbindable": true}

// validSpecPath is an absolute, clean path other than /.
func validSpecPath(p string) bool {
	return p != "/" && path.IsAbs(p) && path.Clean(p) == p && len(p) <= maxSpecPath && !strings.ContainsRune(p, 0)
}

// containerSpec checks an init's container configuration (nil: the
// defaults) and returns what its helper applies.
func containerSpec(c *pb.ContainerConfig, readOnlyRoot bool) (*helperContainer, error) {
	bad := func(format string, a ...any) error {
		return errdefs.Errorf(errdefs.KindInvalidArgument, "container: "+format, a...)
	}
	if c == nil {
		c = defaultContainer()
	}
	hc := &helperContainer{Cloneflags: unix.CLONE_NEWNS, ReadOnlyRoot: readOnlyRoot}
	for _, ns := range c.Namespaces {
		f, ok := map[string]uintptr{"pid": unix.CLONE_NEWPID, "uts": unix.CLONE_NEWUTS, "ipc": unix.CLONE_NEWIPC, "mount": unix.CLONE_NEWNS}[ns]
		if !ok {
			return nil, bad("namespace %q: only mount, pid, uts and ipc namespaces are created in the guest", ns)
		}
		hc.Cloneflags |= f
	}
	if len(c.Mounts) > maxMounts {
		return nil, bad("%d mounts exceed the limit of %d", len(c.Mounts), maxMounts)
	}
	hasDev, hasPts := false, false
	for _, m := range c.Mounts {
		if !validSpecPath(m.Destination) {
			return nil, bad("mount destination %q must be an absolute, clean path other than /", m.Destination)
		}
		switch m.Type {
		case "proc", "sysfs", "tmpfs", "devpts", "mqueue":
		default:
			return nil, bad("mount %s: type %q is not mounted in the guest (proc, sysfs, tmpfs, devpts and mqueue are)", m.Destination, m.Type)
		}
		if len(m.Options) > maxMountOptions {
			return nil, bad("mount %s: %d options exceed the limit of %d", m.Destination, len(m.Options), maxMountOptions)
		}
		hm := helperMount{Dest: m.Destination, Type: m.Type}
		var data []string
		for _, o := range m.Options {
			if f, ok := mountFlagOpts[o]; ok {
				if f.clear {
					hm.Flags &^= f.flag
				} else {
					hm.Flags |= f.flag
				}
				continue
			}
			if propagationOpts[o] {
				continue
			}
			if o == "bind" || o == "rbind" || o == "remount" {
				return nil, bad("mount %s: option %q: bind mounts of guest paths are not made", m.Destination, o)
			}
			if o == "" || len(o) > maxMountOption || strings.ContainsFunc(o, func(r rune) bool { return r <= ' ' || r > '~' || r == ',' }) {
				return nil, bad("mount %s: option %q is not a mount option", m.Destination, o)
			}
			data = append(data, o)
		}
		hm.Data = strings.Join(data, ",")
		if m.Type == "devpts" {
			hm.Data = "" // the VM's devpts is bound (docs/kubernetes.md)
		}
		hasDev = hasDev || m.Destination == "/dev"
		hasPts = hasPts || m.Destination == "/dev/pts"
		hc.Mounts = append(hc.Mounts, hm)
	}
	// A container always has /dev with the standard nodes (its root's own
	// device files are on a nodev share) and the terminals of the VM.
	if !hasDev {
		hc.Mounts = append([]helperMount{{Dest: "/dev", Type: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_STRICTATIME, Data: "mode=755,size=65536k"}}, hc.Mounts...)
	}
	if !hasPts {
		hc.Mounts = append(hc.Mounts, helperMount{Dest: "/dev/pts", Type: "devpts", Flags: unix.MS_NOSUID | unix.MS_NOEXEC})
	}
	for _, l := range []struct {
		in  []string
		out *[]string
	}{{c.MaskedPaths, &hc.Masked}, {c.ReadonlyPaths, &hc.Readonly}} {
		if len(l.in) > maxSpecPaths {
			return nil, bad("%d paths exceed the limit of %d", len(l.in), maxSpecPaths)
		}
		for _, p := range l.in {
			if !validSpecPath(p) {
				return nil, bad("masked or read-only path %q must be an absolute, clean path other than /", p)
			}
		}
		*l.out = append([]string(nil), l.in...)
	}
	return hc, nil
}

// containerInit is the running init of the sandbox's container.
type containerInit struct {
	mu       sync.Mutex
	pid      int
	pidfd    int
	flags    uintptr
	starting bool // an init is being started
}

// reserve claims the start of an init: one container at a time.
func (c *containerInit) reserve() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pid > 0 || c.starting {
		return errdefs.Errorf(errdefs.KindFailedPrecondition, "the container's init is already running")
	}
	c.starting = true
	return nil
}

// set records a started init (pid 0: it is gone, or did not start).
func (c *containerInit) set(pid int, flags uintptr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.starting = false
	if c.pidfd > 0 {
		unix.Close(c.pidfd)
		c.pidfd = 0
	}
	c.pid, c.flags = pid, flags
	if pid > 0 {
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			c.pidfd = fd
		}
	}
}

func (c *containerInit) running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pid > 0
}

// joinFiles opens the running init's root and namespaces, in the order
// the helper joins them: root, mnt, then uts and ipc when the init has
// its own, and pid separately (the caller's thread joins it: a PID
// namespace applies to children).
func (c *containerInit) joinFiles() (files []*os.File, names []string, pidns *os.File, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pid == 0 {
		return nil, nil, nil, errdefs.Errorf(errdefs.KindFailedPrecondition, "the container's init is not running: start it first (every other process joins its namespaces)")
	}
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
		if pidns != nil {
			pidns.Close()
		}
	}
	open := func(name string) (*os.File, error) {
		flags := unix.O_RDONLY | unix.O_CLOEXEC // setns needs a real open
		if name == "root" {
			flags = unix.O_PATH | unix.O_CLOEXEC
		}
		return os.OpenFile(fmt.Sprintf("/proc/%d/%s", c.pid, name), flags, 0)
	}
	want := []string{"root", "ns/mnt"}
	if c.flags&unix.CLONE_NEWUTS != 0 {
		want = append(want, "ns/uts")
	}
	if c.flags&unix.CLONE_NEWIPC != 0 {
		want = append(want, "ns/ipc")
	}
	for _, n := range want {
		f, err := open(n)
		if err != nil {
			closeAll()
			return nil, nil, nil, errdefs.Errorf(errdefs.KindFailedPrecondition, "the container's init is gone (%v)", err)
		}
		files, names = append(files, f), append(names, n)
	}
	if c.flags&unix.CLONE_NEWPID != 0 {
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/pid", c.pid))
		if err != nil {
			closeAll()
			return nil, nil, nil, errdefs.Errorf(errdefs.KindFailedPrecondition, "the container's init is gone (%v)", err)
		}
		pidns = f
	}
	// The files are the init's only if it still runs (its pid not reused).
	if c.pidfd > 0 {
		if err := unix.PidfdSendSignal(c.pidfd, 0, nil, 0); err != nil {
			closeAll()
			return nil, nil, nil, errdefs.Errorf(errdefs.KindFailedPrecondition, "the container's init is gone")
		}
	}
	return files, names, pidns, nil
}

// startInPIDNamespace runs start on a thread that joined pidns, so that
// the process it forks is in the container's PID namespace. The thread is
// never handed back to the runtime (it exits with the goroutine).
func startInPIDNamespace(pidns *os.File, start func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread dies here
		if err := unix.Setns(int(pidns.Fd()), unix.CLONE_NEWPID); err != nil {
			done <- errdefs.Errorf(errdefs.KindGuest, "join the container's PID namespace: %v", err)
			return
		}
		done <- start()
	}()
	return <-done
}

// joinContainer (in the helper, on its locked thread) enters the
// namespaces and root given as fds 5.. in hs.Join's order.
func joinContainer(names []string) error {
	guest := func(what string, err error) error { return errdefs.Errorf(errdefs.KindGuest, "%s: %v", what, err) }
	// setns into a mount namespace needs a thread that shares no fs
	// attributes; this thread executes the command.
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return guest("unshare fs", err)
	}
	root := -1
	for i, n := range names {
		fd := 5 + i
		switch n {
		case "root":
			root = fd
			continue
		case "ns/mnt":
			if err := unix.Setns(fd, unix.CLONE_NEWNS); err != nil {
				return guest("join the container's mount namespace", err)
			}
		case "ns/uts":
			if err := unix.Setns(fd, unix.CLONE_NEWUTS); err != nil {
				return guest("join the container's UTS namespace", err)
			}
		case "ns/ipc":
			if err := unix.Setns(fd, unix.CLONE_NEWIPC); err != nil {
				return guest("join the container's IPC namespace", err)
			}
		default:
			return guest("join", fmt.Errorf("unknown %q", n))
		}
		unix.Close(fd)
	}
	if root < 0 {
		return guest("join", errors.New("no root"))
	}
	if err := unix.Fchdir(root); err != nil {
		return guest("enter the container's root", err)
	}
	if err := unix.Chroot("."); err != nil {
		return guest("chroot into the container's root", err)
	}
	unix.Close(root)
	return unix.Chdir("/")
}

// setupContainer (in the init's helper, on its locked thread, in its new
// mount namespace) mounts the container's file systems in root, pivots
// into it and applies the masked and read-only paths.
func setupContainer(root string, c *helperContainer) error {
	guest := func(what string, err error) error {
		return errdefs.Errorf(errdefs.KindGuest, "container: %s: %v", what, err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return guest("make mounts private", err)
	}
	// Stand on a bind of the agent's root: pivot_root moves the caller's
	// root mount, which must not be the namespace's own (the initramfs).
	if err := os.MkdirAll(nsRootDir, 0o700); err != nil {
		return guest("create "+nsRootDir, err)
	}
	if err := unix.Mount("/", nsRootDir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return guest("bind the agent's root", err)
	}
	if err := unix.Chdir(nsRootDir); err != nil {
		return guest("chdir", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return guest("move the agent's root", err)
	}
	if err := unix.Chroot("."); err != nil {
		return guest("chroot", err)
	}
	// The root directory as a mount of its own (pivot_root's new root).
	if err := unix.Mount(root, root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return guest("bind the root directory", err)
	}
	pts, err := os.OpenFile("/dev/pts", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return guest("open /dev/pts", err)
	}
	defer pts.Close()
	for _, m := range c.Mounts {
		if err := mountInRoot(root, m, pts); err != nil {
			return err
		}
	}
	if err := unix.Chdir(root); err != nil {
		return guest("chdir root", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return guest("pivot_root", err)
	}
	// The old root is stacked on the new one: detach it, and with it
	// every mount of the agent.
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return guest("detach the agent's root", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return guest("chdir /", err)
	}
	for _, p := range c.Masked {
		if err := maskPath(p); err != nil {
			return guest("mask "+p, err)
		}
	}
	for _, p := range c.Readonly {
		if err := readonlyPath(p); err != nil {
			return guest("read-only "+p, err)
		}
	}
	if c.ReadOnlyRoot {
		if err := remountReadOnly("/"); err != nil {
			return guest("remount the root read-only", err)
		}
	}
	return nil
}

// openInRoot opens dest inside root (symlinks resolved as if root were /),
// creating it, and the directories above it, when missing: a directory,
// or an empty file when file is set.
func openInRoot(root *os.File, dest string, file bool) (*os.File, error) {
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	rel := strings.TrimPrefix(dest, "/")
	if rel == "" {
		rel = "."
	}
	fd, err := unix.Openat2(int(root.Fd()), rel, how)
	if err == nil {
		return os.NewFile(uintptr(fd), dest), nil
	}
	if !errors.Is(err, unix.ENOENT) || dest == "/" {
		return nil, err
	}
	parent, err := openInRoot(root, path.Dir(dest), false)
	if err != nil {
		return nil, err
	}
	defer parent.Close()
	name := path.Base(dest)
	// The parent was opened O_PATH: reopen it to create in it.
	pd, err := unix.Openat(int(parent.Fd()), ".", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(pd)
	if file {
		f, err := unix.Openat(pd, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, err
		}
		if err == nil {
			unix.Close(f)
		}
	} else if err := unix.Mkdirat(pd, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, err
	}
	fd, err = unix.Openat2(int(root.Fd()), rel, how)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), dest), nil
}

// mountInRoot mounts m at its destination inside root, through an fd of
// the destination (the rootfs is the workload's: a symlink in it must not
// carry a mount out of it).
func mountInRoot(root string, m helperMount, pts *os.File) error {
	guest := func(err error) error {
		return errdefs.Errorf(errdefs.KindGuest, "container: mount %s on %s: %v", m.Type, m.Dest, err)
	}
	rf, err := os.OpenFile(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return guest(err)
	}
	defer rf.Close()
	target, err := openInRoot(rf, m.Dest, false)
	if err != nil {
		return guest(err)
	}
	defer target.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(target.Fd()), &st); err != nil {
		return guest(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return guest(errors.New("the destination is not a directory"))
	}
	at := fmt.Sprintf("/proc/self/fd/%d", target.Fd())
	if m.Type == "devpts" {
		// One devpts for the VM: the agent opens the container's
		// terminals in it, so they must be visible inside.
		src := fmt.Sprintf("/proc/self/fd/%d", pts.Fd())
		if err := unix.Mount(src, at, "", unix.MS_BIND, ""); err != nil {
			return guest(fmt.Errorf("bind the VM's devpts: %w", err))
		}
		// Reopen: the fd names the directory under the new mount.
		top, err := openInRoot(rf, m.Dest, false)
		if err != nil {
			return guest(err)
		}
		defer top.Close()
		if err := unix.Mount("", fmt.Sprintf("/proc/self/fd/%d", top.Fd()), "", unix.MS_BIND|unix.MS_REMOUNT|m.Flags, ""); err != nil {
			return guest(fmt.Errorf("remount: %w", err))
		}
		return nil
	}
	if err := unix.Mount(m.Type, at, m.Type, m.Flags, m.Data); err != nil {
		return guest(err)
	}
	if m.Type == "tmpfs" && m.Dest == "/dev" {
		// Reopen: the fd names the directory under the new mount.
		dev, err := openInRoot(rf, "/dev", false)
		if err != nil {
			return guest(err)
		}
		defer dev.Close()
		if err := makeDev(fmt.Sprintf("/proc/self/fd/%d", dev.Fd())); err != nil {
			return guest(err)
		}
	}
	return nil
}

// makeDev fills a /dev tmpfs with the standard device nodes and links.
func makeDev(dev string) error {
	for _, n := range []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}} {
		p := filepath.Join(dev, n.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return fmt.Errorf("mknod /dev/%s: %w", n.name, err)
		}
		os.Chmod(p, 0o666) // the umask applied to mknod
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
		"stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx", "core": "/proc/kcore"} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return fmt.Errorf("/dev/%s: %w", name, err)
		}
	}
	return nil
}

// maskPath hides p: an empty read-only tmpfs on a directory, /dev/null
// on anything else; a path that does not exist needs no mask.
func maskPath(p string) error {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return unix.Mount("tmpfs", p, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	}
	return unix.Mount("/dev/null", p, "", unix.MS_BIND, "")
}

// readonlyPath binds p on itself and makes that mount read-only.
func readonlyPath(p string) error {
	if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	return remountReadOnly(p)
}

// remountReadOnly makes the mount at p read-only, keeping its nosuid,
// nodev and noexec.
func remountReadOnly(p string) error {
	var sf unix.Statfs_t
	if err := unix.Statfs(p, &sf); err != nil {
		return err
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY)
	for st, ms := range map[int64]uintptr{unix.ST_NOSUID: unix.MS_NOSUID, unix.ST_NODEV: unix.MS_NODEV, unix.ST_NOEXEC: unix.MS_NOEXEC} {
		if sf.Flags&st != 0 {
			flags |= ms
		}
	}
	return unix.Mount("", p, "", flags, "")
}
