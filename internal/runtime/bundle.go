package runtime

// Sandboxes whose root is a host directory (an OCI bundle's rootfs), and
// the processes that run in them: the runtime API the containerd shim
// (internal/shim) calls. See docs/kubernetes.md.

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/volume"
)

// BundleOptions describe a sandbox whose processes run in a host
// directory: an OCI bundle's rootfs, already mounted on the host by the
// caller (for containerd, the snapshotter's overlay). Exactly RootDir is
// shared into the guest, read-write, over virtiofs; the guest agent keeps
// its own root and runs every process of the sandbox chrooted in RootDir,
// with /proc, /sys, /dev, /dev/pts, /dev/shm and /tmp set up for them.
type BundleOptions struct {
	// Name of the sandbox ("" generates one); see sandbox.ValidateName.
	Name string
	// BundleDir is the OCI bundle directory (recorded in the plan, never
	// shared); RootDir is its rootfs, the only host path the guest sees.
	BundleDir string
	RootDir   string
	// Hostname is the spec's hostname ("" keeps the sandbox's name): the
	// guest's hostname. A DNS label: letters, digits, '-', at most 63.
	Hostname string
	// ReadOnlyRoot is the spec's root.readonly: the root is mounted
	// read-only in the guest once mvm's mount points exist in it (the
	// mounts on it, such as /tmp and /dev, stay writable).
	ReadOnlyRoot bool
	// CPUs and MemoryMiB size the VM (0: 1 CPU, 256 MiB); see
	// OCIResources for the mapping from an OCI spec.
	CPUs      int
	MemoryMiB int
	// Profile is the run profile ("" is restrictive: no network device).
	Profile string
	// Allow is the egress allowlist (HOST[:PORT] entries, as --allow); it
	// needs a run profile that allows network (standard or above). It is
	// a request (origin "manifest"): never the host's loopback.
	Allow []string
	// Labels are shown by `mvmctl ls` (e.g. LabelContainerdNamespace,
	// LabelContainerdID) and recorded in the sandbox spec.
	Labels map[string]string
	// BootTimeout bounds the boot (0: BootTimeout()).
	BootTimeout time.Duration
	// Transient sandboxes are held by their creator (Sandbox.Hold): when
	// it closes, even because the creator was killed, the sandbox goes.
	Transient bool
}

// Labels the containerd shim puts on its sandboxes.
const (
	LabelContainerdNamespace = "io.containerd.namespace"
	LabelContainerdID        = "io.containerd.id"
	LabelOwner               = "io.mvm.owner" // e.g. "containerd-shim-mvm-v2"
)

// DefaultBundleMemoryMiB is a bundle sandbox's memory when none is asked
// for, and MinBundleMemoryMiB the floor of any mapping (the guest kernel
// and agent need it whatever the container's limit).
const (
	DefaultBundleMemoryMiB = 256
	MinBundleMemoryMiB     = 128
)

// Label limits: `mvmctl ls` shows them, the spec file holds them.
const (
	maxLabels        = 16
	maxLabelKeyLen   = 128
	maxLabelValueLen = 256
)

var labelKeyRe = lazyre.New(`^[A-Za-z0-9][A-Za-z0-9._/-]*$`)

// ValidateLabels checks sandbox labels: at most 16, keys of letters,
// digits and ._/- (at most 128 bytes), printable values of at most 256
// bytes.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return fmt.Errorf("%d labels exceed the limit of %d", len(labels), maxLabels)
	}
	for k, v := range labels {
		if len(k) > maxLabelKeyLen || !labelKeyRe.MatchString(k) {
			return fmt.Errorf("label key %q: use letters, digits and ._/- (at most %d bytes)", k, maxLabelKeyLen)
		}
		if len(v) > maxLabelValueLen {
			return fmt.Errorf("label %s: value longer than %d bytes", k, maxLabelValueLen)
		}
		for _, c := range v {
			if c < 0x20 || c == 0x7f {
				return fmt.Errorf("label %s: value holds a control character", k)
			}
		}
	}
	return nil
}

// bundleUpOptions turns bundle options into the Up options that boot
// them: the minimal image (the agent's own root, no disk), RootDir as the
// processes' root, the restrictive profile unless another is asked for.
func (r *Runtime) bundleUpOptions(o BundleOptions) (UpOptions, error) {
	if o.RootDir == "" {
		return UpOptions{}, errdefs.Errorf(errdefs.KindInvalidArgument, "a bundle sandbox needs its root directory (the bundle's rootfs)")
	}
	if o.BundleDir != "" && (!filepath.IsAbs(o.BundleDir) || filepath.Clean(o.BundleDir) != o.BundleDir) {
		return UpOptions{}, errdefs.Errorf(errdefs.KindInvalidArgument, "bundle directory %q must be an absolute, clean path", o.BundleDir)
	}
	if err := ValidateLabels(o.Labels); err != nil {
		return UpOptions{}, errdefs.New(errdefs.KindInvalidArgument, err)
	}
	if o.Hostname != "" && !hostnameRe.MatchString(o.Hostname) {
		return UpOptions{}, errdefs.Errorf(errdefs.KindInvalidArgument, "hostname %q: use letters, digits and '-' (at most 63, not starting or ending with '-')", o.Hostname)
	}
	prof := o.Profile
	if prof == "" {
		prof = string(plan.Restrictive)
	}
	mem := o.MemoryMiB
	if mem == 0 {
		mem = DefaultBundleMemoryMiB
	}
	if mem < MinBundleMemoryMiB {
		mem = MinBundleMemoryMiB
	}
	u := UpOptions{
		Name: o.Name, CPUs: o.CPUs, MemoryMiB: mem, BootTimeout: o.BootTimeout,
		RunProfile: prof,
		RootDir:    &RootDir{HostPath: o.RootDir, BundleDir: o.BundleDir, ReadOnly: o.ReadOnlyRoot, Hostname: o.Hostname},
		Labels:     o.Labels,
		NoBuildDir: true,
		Transient:  o.Transient,
	}
	if len(o.Allow) > 0 {
		cfg, _, err := netpolicy.Build(netpolicy.Request{Allow: o.Allow, Origin: netpolicy.OriginManifest}, func(string) (string, bool) { return "", false })
		if err != nil {
			return UpOptions{}, errdefs.Errorf(errdefs.KindInvalidArgument, "egress allowlist: %v", err)
		}
		u.Network = cfg
	}
	return u, nil
}

// RootDir is a host directory that is the root of a sandbox's processes
// (UpOptions.RootDir).
type RootDir struct {
	HostPath  string
	BundleDir string
	ReadOnly  bool
	Hostname  string // validated by the caller (bundleUpOptions)
}

var hostnameRe = lazyre.New(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// checkRootDir applies the host-directory rules (volume.CheckHostDir: an
// existing real directory, not /, not $HOME, not mvm's own) and returns
// the cleaned path.
func (r *Runtime) checkRootDir(rd *RootDir) (string, error) {
	home, _ := os.UserHomeDir()
	p, err := volume.CheckHostDir(rd.HostPath, home, r.Dirs.Data, r.Dirs.State, r.Dirs.Cache)
	if err != nil {
		return "", fmt.Errorf("%w: root directory: %v", ErrAttach, err)
	}
	return p, nil
}

// UpBundle boots a sandbox whose processes run in o.RootDir and returns
// once its agent is ready; no process runs yet (StartProcess starts the
// first). The plan records the root directory and the bundle, and is
// admitted before boot; on any failure nothing is left behind.
func (r *Runtime) UpBundle(ctx context.Context, o BundleOptions) (*Sandbox, error) {
	u, err := r.bundleUpOptions(o)
	if err != nil {
		return nil, err
	}
	return r.Up(ctx, u)
}

// Rlimit is one resource limit of a process (OCI process.rlimits).
type Rlimit struct {
	// Type is the limit's name as OCI spells it ("RLIMIT_NOFILE").
	Type       string
	Soft, Hard uint64
}

// ProcessSpec is a process to run in a bundle sandbox (the part of an OCI
// process spec mvm applies; see ProcessSpecFromOCI and docs/kubernetes.md).
type ProcessSpec struct {
	// ID names the process in this sandbox (containerd's exec id, or
	// "init"); Signal, Wait, CloseStdin, ResizePTY and DeleteProcess take
	// it. Letters, digits and ._- , at most 128 bytes.
	ID   string
	Args []string
	// Env is the whole environment, KEY=VALUE (nothing is added but HOME
	// from the root's /etc/passwd when it is missing, and PATH for the
	// command lookup only).
	Env []string
	// Cwd is the working directory inside the root ("" is /).
	Cwd            string
	UID, GID       uint32
	AdditionalGids []uint32
	// Umask, when set, is the process's file mode creation mask.
	Umask           *uint32
	Rlimits         []Rlimit
	NoNewPrivileges bool
	// Capabilities, when set, are the process's capability sets (OCI
	// process.capabilities, names such as "CAP_CHOWN"); nil keeps what the
	// uid gets (all of them for root).
	Capabilities *Capabilities
	// Terminal runs the process on a pseudo-terminal of Rows x Cols
	// (stdout and stderr are then one stream, written to Stdout).
	Terminal   bool
	Rows, Cols uint32
	// Init marks the sandbox's first process: when it exits, every other
	// process of the sandbox is killed (as in a container's PID
	// namespace).
	Init bool
	// Container is what the init sets up in the guest (Init only): its
	// namespaces, mounts, masked and read-only paths; nil is mvm's
	// default container (docs/kubernetes.md). Every other process joins
	// the running init's namespaces and root.
	Container *ContainerSpec
}

// ContainerSpec is the part of an OCI spec's linux and mounts sections
// the guest applies when the init starts. The init always has a mount
// namespace of its own and pivots into the root directory.
type ContainerSpec struct {
	// Namespaces of its own besides the mount namespace: "pid", "uts",
	// "ipc" (the network namespace is the VM's).
	Namespaces []string
	// Mounts inside the root, in order: types proc, sysfs, tmpfs, devpts
	// (the VM's terminals) and mqueue. No host paths: they do not exist
	// in the guest.
	Mounts        []ContainerMount
	MaskedPaths   []string
	ReadonlyPaths []string
}

// ContainerMount is one mount of ContainerSpec.Mounts.
type ContainerMount struct {
	Destination, Type, Source string
	Options                   []string
}

// ProcessIO is a process's stdio. A nil Stdin is /dev/null; Stdin's EOF
// closes the process's stdin. Writes to Stdout and Stderr happen in the
// order the guest sent them, and all of them before Wait returns.
type ProcessIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// ProcessStatus is a started process.
type ProcessStatus struct {
	ID      string
	Pid     int32 // in the guest
	Started time.Time
	// Exit is set once the process has exited.
	Exit   *ProcExit
	Exited time.Time
	// ReceiptID names the signed receipt of the run (set once exited);
	// Receipt is the receipt itself (canonical JSON), for the caller to keep.
	ReceiptID string
	Receipt   []byte
}

// GuestProcess is one process of a guest (Pids).
type GuestProcess struct {
	Pid, PPid int32
	Command   string // the kernel's comm (at most 15 bytes)
	// ID is the ProcessSpec.ID of a process StartProcess started ("" for
	// its children).
	ID string
}

var processIDRe = lazyre.New(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Validate checks a process spec on the host (the agent checks it again).
func (p *ProcessSpec) Validate() error {
	bad := func(format string, a ...any) error {
		return errdefs.Errorf(errdefs.KindInvalidArgument, "process %s: %s", p.ID, fmt.Sprintf(format, a...))
	}
	if !processIDRe.MatchString(p.ID) {
		return errdefs.Errorf(errdefs.KindInvalidArgument, "process id %q: use letters, digits and ._- (at most 128 bytes)", p.ID)
	}
	if len(p.Args) == 0 {
		return bad("no args")
	}
	if len(p.Args) > maxSpecArgs || len(p.Env) > maxSpecEnv {
		return bad("more than %d args or %d environment entries", maxSpecArgs, maxSpecEnv)
	}
	for _, a := range p.Args {
		if strings.ContainsRune(a, 0) {
			return bad("an argument holds a NUL byte")
		}
	}
	for _, e := range p.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.ContainsRune(e, 0) {
			return bad("environment entry %q is not KEY=VALUE", trunc(e, 40))
		}
	}
	if p.Cwd != "" && (!strings.HasPrefix(p.Cwd, "/") || len(p.Cwd) > 4096 || strings.ContainsRune(p.Cwd, 0)) {
		return bad("cwd %q must be an absolute path", trunc(p.Cwd, 80))
	}
	if len(p.AdditionalGids) > maxSpecGroups {
		return bad("%d additional groups exceed the limit of %d", len(p.AdditionalGids), maxSpecGroups)
	}
	if p.Container != nil && !p.Init {
		return bad("only the init creates the container (the other processes join it)")
	}
	if c := p.Container; c != nil && (len(c.Mounts) > 64 || len(c.MaskedPaths) > 128 || len(c.ReadonlyPaths) > 128 || len(c.Namespaces) > 8) {
		return bad("more than 64 mounts, 128 masked or 128 read-only paths")
	}
	if p.Umask != nil && *p.Umask > 0o777 {
		return bad("umask %o is not a permission mask", *p.Umask)
	}
	if len(p.Rlimits) > len(RlimitTypes) {
		return bad("%d rlimits: there are only %d kinds", len(p.Rlimits), len(RlimitTypes))
	}
	seen := map[string]bool{}
	for _, l := range p.Rlimits {
		if _, ok := RlimitTypes[l.Type]; !ok {
			return bad("unknown rlimit %q", l.Type)
		}
		if seen[l.Type] {
			return bad("rlimit %s given twice", l.Type)
		}
		seen[l.Type] = true
		if l.Soft > l.Hard {
			return bad("rlimit %s: soft %d above hard %d", l.Type, l.Soft, l.Hard)
		}
	}
	if c := p.Capabilities; c != nil {
		for _, set := range [][]string{c.Bounding, c.Effective, c.Permitted, c.Inheritable, c.Ambient} {
			if len(set) > 2*len(CapabilityNumbers) {
				return bad("too many capabilities")
			}
			if _, err := capMask(set); err != nil {
				return bad("%v", err)
			}
		}
	}
	if p.Terminal && (p.Rows > 0xffff || p.Cols > 0xffff) {
		return bad("console size %dx%d is too large", p.Cols, p.Rows)
	}
	return nil
}

// Capabilities are a process's capability sets, by name.
type Capabilities struct {
	Bounding, Effective, Permitted, Inheritable, Ambient []string
}

// CapabilityNumbers are the Linux capabilities a spec may name (those of
// the guest kernel, Linux 6.1: up to CAP_CHECKPOINT_RESTORE).
var CapabilityNumbers = map[string]uint{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
	"CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
	"CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
	"CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18,
	"CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
	"CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28,
	"CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32,
	"CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36,
	"CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}

// capMask turns capability names into a bit mask.
func capMask(names []string) (uint64, error) {
	var m uint64
	for _, n := range names {
		c, ok := CapabilityNumbers[n]
		if !ok {
			return 0, fmt.Errorf("unknown capability %q", trunc(n, 40))
		}
		m |= 1 << c
	}
	return m, nil
}

// Caps of a process spec (the agent enforces the same).
const (
	maxSpecArgs   = 4096
	maxSpecEnv    = 1024
	maxSpecGroups = 256
)

// RlimitTypes are the rlimits a ProcessSpec may set, by OCI name, with
// their Linux resource numbers.
var RlimitTypes = map[string]int{
	"RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3,
	"RLIMIT_CORE": 4, "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7,
	"RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11,
	"RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13, "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// SortedLabels renders labels as k=v, sorted (for `ls`).
func SortedLabels(l map[string]string) []string {
	out := make([]string, 0, len(l))
	for k, v := range l {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// RootDirTag is the virtiofs tag of a bundle sandbox's root directory;
// the agent mounts it (mvm.rootdir=TAG) and chroots processes into it.
const RootDirTag = sandbox.RootDirTag

// OCIResources maps an OCI spec's Linux resources to a VM's size: CPU
// quota/period to vCPUs, rounded up (no quota, or a period of 0: 0, the
// default of 1); the memory limit to MiB, rounded up, at least
// MinBundleMemoryMiB (no limit, or one <= 0: 0, the default
// DefaultBundleMemoryMiB). vCPUs are capped at 64 and memory at 256 GiB,
// the largest sizes a sandbox may have.
func OCIResources(cpuQuota int64, cpuPeriod uint64, memoryLimit int64) (cpus, memoryMiB int) {
	if cpuQuota > 0 && cpuPeriod > 0 {
		q := uint64(cpuQuota)
		n := q / cpuPeriod
		if q%cpuPeriod != 0 {
			n++
		}
		cpus = int(min(n, 64))
	}
	if memoryLimit > 0 {
		mib := uint64(memoryLimit) >> 20
		if uint64(memoryLimit)&(1<<20-1) != 0 {
			mib++
		}
		memoryMiB = int(min(max(mib, MinBundleMemoryMiB), 256<<10))
	}
	return cpus, memoryMiB
}
