package agent

// Bundle sandboxes: the root of the sandbox's processes is a host
// directory (an OCI bundle's rootfs) shared over virtiofs (mvm.rootdir=TAG
// on the kernel command line). The agent keeps its own root; it mounts the
// share at bundleRoot and starts each process through a re-exec of itself
// (bundleExecArg) that sets up the container (the init: namespaces, the
// spec's mounts, pivot_root; container.go) or joins it (any other
// process), applies the OCI process spec (rlimits, umask, groups, gid,
// uid, capabilities, no_new_privs, cwd) and then executes the command. A
// failure before the exec comes back to the agent on a close-on-exec
// pipe, so a start either runs the command or reports why not.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"golang.org/x/sys/unix"
)

const (
	// bundleRoot is where a bundle sandbox's root directory is mounted.
	bundleRoot = "/run/mvm/rootfs"
	// bundleExecArg makes the agent binary the exec helper (os.Args[1]).
	bundleExecArg = "__mvm-bundle-exec"
	// maxRlimits is the number of RLIMIT_* kinds Linux has.
	maxRlimits = 16
	// maxHelperSpecBytes caps the spec the helper reads.
	maxHelperSpecBytes = 8 << 20
)

// rootDirTag returns the virtiofs tag of mvm.rootdir=TAG ("" when absent).
func rootDirTag(cmdline string) string {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, "mvm.rootdir="); ok {
			return v
		}
	}
	return ""
}

// validTag is a virtiofs tag the host may name.
func validTag(t string) bool {
	if t == "" || len(t) > 36 {
		return false
	}
	for _, c := range t {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// rootDirHostname is mvm.rootdir_hostname= (the spec's hostname), "" when
// absent or not a DNS label.
func rootDirHostname(cmdline string) string {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, "mvm.rootdir_hostname="); ok && len(v) <= 63 && v != "" &&
			!strings.HasPrefix(v, "-") && !strings.HasSuffix(v, "-") &&
			!strings.ContainsFunc(v, func(r rune) bool {
				return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-')
			}) {
			return v
		}
	}
	return ""
}

// rootDirReadOnly reports mvm.rootdir_ro=1 (the spec's root.readonly).
func rootDirReadOnly(cmdline string) bool {
	for _, f := range strings.Fields(cmdline) {
		if f == "mvm.rootdir_ro=1" {
			return true
		}
	}
	return false
}

// setupBundleRoot mounts the root directory share at bundleRoot (the
// container's mounts are made by its init, in its own mount namespace).
// It fails the boot on any error: a container never runs without its root.
func setupBundleRoot(tag string) error {
	if !validTag(tag) {
		return fmt.Errorf("mvm.rootdir: bad tag %q", tag)
	}
	if err := os.MkdirAll(bundleRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(tag, bundleRoot, "virtiofs", unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("mount root directory (virtiofs %s) on %s: %w", tag, bundleRoot, err)
	}
	return nil
}

// mountDir makes root/name a directory to mount on: created when missing,
// refused when it is a symlink or not a directory (the rootfs is the
// workload's content: a symlink there must not redirect a mount onto the
// agent's own tree).
func mountDir(root, name string) (string, error) {
	p := filepath.Join(root, name)
	st, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(p, 0o755); err != nil {
			return "", fmt.Errorf("root directory: create /%s: %w", name, err)
		}
		return p, nil
	}
	if err != nil {
		return "", fmt.Errorf("root directory: /%s: %w", name, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("root directory: /%s is a symlink or not a directory; refusing to mount on it", name)
	}
	return p, nil
}

// helperSpec is what the exec helper applies before it executes Argv.
type helperSpec struct {
	Root       string         `json:"root"`
	Argv       []string       `json:"argv"`
	Env        []string       `json:"env"`
	Cwd        string         `json:"cwd"`
	UID        uint32         `json:"uid"`
	GID        uint32         `json:"gid"`
	Groups     []uint32       `json:"groups"`
	Rlimits    []helperRlimit `json:"rlimits,omitempty"`
	NoNewPrivs bool           `json:"no_new_privs,omitempty"`
	Umask      int            `json:"umask"` // -1: unchanged
	Caps       *helperCaps    `json:"caps,omitempty"`
	// Container is set for the init: the container it sets up
	// (container.go); Join for every other process: the files (fds 5..)
	// of the init's root and namespaces it enters.
	Container *helperContainer `json:"container,omitempty"`
	Join      []string         `json:"join,omitempty"`
}

// helperCaps are capability sets as bit masks.
type helperCaps struct {
	Bounding, Effective, Permitted, Inheritable, Ambient uint64
}

// lastCap is the highest capability the guest kernel (Linux 6.1) knows.
const lastCap = 40

type helperRlimit struct {
	Resource int    `json:"r"`
	Soft     uint64 `json:"s"`
	Hard     uint64 `json:"h"`
}

// helperError is what the helper reports when it cannot execute.
type helperError struct {
	Kind   string `json:"kind"`
	Reason string `json:"reason,omitempty"`
	Msg    string `json:"msg"`
}

// bundleSpec checks a bundle start from the host and returns what the
// helper applies. Everything here came from the host: it is validated,
// whatever the host already checked.
func bundleSpec(st *pb.ExecStart, root string, readOnlyRoot bool) (*helperSpec, error) {
	b := st.Bundle
	bad := func(format string, a ...any) error {
		return errdefs.Errorf(errdefs.KindInvalidArgument, "bundle process: "+format, a...)
	}
	if root == "" {
		return nil, errdefs.Errorf(errdefs.KindFailedPrecondition, "this sandbox has no root directory (it was not created from a bundle); bundle processes need one")
	}
	if st.Entrypoint || len(st.Env) > 0 {
		return nil, bad("entrypoint and env do not apply (the bundle's env is the whole environment)")
	}
	if len(st.Argv) == 0 {
		return nil, bad("empty argv")
	}
	if len(b.Env) > maxEnv {
		return nil, bad("%d environment entries exceed the limit of %d", len(b.Env), maxEnv)
	}
	for _, e := range b.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.ContainsRune(e, 0) {
			return nil, bad("an environment entry is not KEY=VALUE")
		}
	}
	cwd := st.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if !path.IsAbs(cwd) || len(cwd) > agentapi.MaxPathBytes || strings.ContainsRune(cwd, 0) {
		return nil, bad("cwd must be an absolute path")
	}
	if len(b.AdditionalGids) > agentapi.MaxGroups {
		return nil, bad("%d additional groups exceed the limit of %d", len(b.AdditionalGids), agentapi.MaxGroups)
	}
	if b.Uid == ^uint32(0) || b.Gid == ^uint32(0) {
		return nil, bad("uid or gid 4294967295 is not an id")
	}
	for _, g := range b.AdditionalGids {
		if g == ^uint32(0) {
			return nil, bad("group 4294967295 is not an id")
		}
	}
	if b.HasUmask && b.Umask > 0o777 {
		return nil, bad("umask %o is not a permission mask", b.Umask)
	}
	if len(b.Rlimits) > maxRlimits {
		return nil, bad("%d rlimits: Linux has %d kinds", len(b.Rlimits), maxRlimits)
	}
	if len(st.Id) > agentapi.MaxProcessIDBytes || strings.ContainsFunc(st.Id, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return nil, bad("process id too long or not printable")
	}
	if st.Rows > 0xffff || st.Cols > 0xffff {
		return nil, bad("terminal size %dx%d is too large", st.Cols, st.Rows)
	}
	hs := &helperSpec{Root: root, Argv: st.Argv, Env: b.Env, Cwd: cwd, UID: b.Uid, GID: b.Gid,
		Groups: append([]uint32{}, b.AdditionalGids...), NoNewPrivs: b.NoNewPrivileges, Umask: -1}
	if b.HasUmask {
		hs.Umask = int(b.Umask)
	}
	if b.HasCapabilities {
		c := &helperCaps{Bounding: b.CapBounding, Effective: b.CapEffective, Permitted: b.CapPermitted,
			Inheritable: b.CapInheritable, Ambient: b.CapAmbient}
		for _, m := range []uint64{c.Bounding, c.Effective, c.Permitted, c.Inheritable, c.Ambient} {
			if m>>(lastCap+1) != 0 {
				return nil, bad("capability mask %#x names capabilities this kernel does not have", m)
			}
		}
		if c.Effective&^c.Permitted != 0 {
			return nil, bad("effective capabilities must be permitted")
		}
		if c.Ambient&^(c.Permitted&c.Inheritable) != 0 {
			return nil, bad("ambient capabilities must be permitted and inheritable")
		}
		hs.Caps = c
	}
	if b.Init {
		c, err := containerSpec(b.Container, readOnlyRoot)
		if err != nil {
			return nil, err
		}
		hs.Container = c
	} else if b.Container != nil {
		return nil, bad("only the init creates the container (the others join it)")
	}
	seen := map[int32]bool{}
	for _, l := range b.Rlimits {
		if l.Resource < 0 || l.Resource >= maxRlimits || seen[l.Resource] {
			return nil, bad("rlimit %d is unknown or given twice", l.Resource)
		}
		seen[l.Resource] = true
		if l.Soft > l.Hard {
			return nil, bad("rlimit %d: soft above hard", l.Resource)
		}
		hs.Rlimits = append(hs.Rlimits, helperRlimit{Resource: int(l.Resource), Soft: l.Soft, Hard: l.Hard})
	}
	return hs, nil
}

// startBundle starts cmd (its stdio and process attributes set) as the
// exec helper for hs and returns once the helper has executed the command
// or with the reason it could not.
func (s *server) startBundle(cmd *exec.Cmd, hs *helperSpec) (<-chan unix.WaitStatus, error) {
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindGuest, "pipe: %v", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		specR.Close()
		specW.Close()
		return nil, errdefs.Errorf(errdefs.KindGuest, "pipe: %v", err)
	}
	defer errR.Close()
	cmd.Path = "/proc/self/exe"
	cmd.Args = []string{"mvm-agent", bundleExecArg}
	cmd.Env = []string{}
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{specR, errW} // fd 3, fd 4
	var pidns *os.File
	started := false // an init's start went through
	if hs.Container != nil {
		// The init: namespaces of its own.
		if err := s.ctr.reserve(); err != nil {
			specR.Close()
			specW.Close()
			errW.Close()
			return nil, err
		}
		defer func() {
			if !started {
				s.ctr.set(0, 0) // releases the reservation
			}
		}()
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Cloneflags |= hs.Container.Cloneflags
	} else {
		// Any other process: the init's root and namespaces (fd 5..).
		files, names, pns, err := s.ctr.joinFiles()
		if err != nil {
			specR.Close()
			specW.Close()
			errW.Close()
			return nil, err
		}
		defer func() {
			for _, f := range files {
				f.Close()
			}
			if pns != nil {
				pns.Close()
			}
		}()
		hs.Join, pidns = names, pns
		cmd.ExtraFiles = append(cmd.ExtraFiles, files...)
	}
	spec, err := json.Marshal(hs)
	if err != nil {
		specR.Close()
		specW.Close()
		errW.Close()
		return nil, err
	}
	var waitCh <-chan unix.WaitStatus
	start := func() (err error) { waitCh, err = s.reaper.start(cmd); return err }
	if pidns != nil {
		err = startInPIDNamespace(pidns, start)
	} else {
		err = start()
	}
	specR.Close()
	errW.Close()
	if err != nil {
		specW.Close()
		if errdefs.KindOf(err) != errdefs.Unknown {
			return nil, err
		}
		return nil, errdefs.Errorf(errdefs.KindGuest, "start the exec helper: %v", err)
	}

	go func() {
		specW.Write(spec)
		specW.Close()
	}()
	b, _ := io.ReadAll(io.LimitReader(errR, 64<<10))
	if len(b) == 0 {
		// The helper executed the command: the container is set up, and
		// the next processes may join it.
		if hs.Container != nil {
			s.ctr.set(cmd.Process.Pid, hs.Container.Cloneflags)
			started = true
		}
		return waitCh, nil
	}
	<-waitCh // the helper exits after reporting
	var he helperError
	if json.Unmarshal(b, &he) != nil || !errdefs.Kind(he.Kind).Valid() {
		return nil, errdefs.Errorf(errdefs.KindGuest, "exec helper: %s", strings.TrimSpace(string(b)))
	}
	return nil, errdefs.WithReason(errdefs.Kind(he.Kind), he.Reason, errors.New(he.Msg))
}

// bundleExecMain is the exec helper: it reads its spec from fd 3, applies
// it, and executes the command; on failure it writes why to fd 4 (closed
// on exec, so the agent reads EOF when the exec succeeds) and exits 127.
func bundleExecMain() {
	// no_new_privs and the exec must happen on the same thread.
	runtime.LockOSThread()
	report := os.NewFile(4, "report")
	unix.CloseOnExec(4)
	fail := func(err error) {
		he := helperError{Kind: string(errdefs.KindOf(err)), Reason: errdefs.ReasonOf(err), Msg: err.Error()}
		if !errdefs.Kind(he.Kind).Valid() {
			he.Kind = string(errdefs.KindGuest)
		}
		b, _ := json.Marshal(he)
		report.Write(b)
		os.Exit(127)
	}
	specFile := os.NewFile(3, "spec")
	b, err := io.ReadAll(io.LimitReader(specFile, maxHelperSpecBytes))
	specFile.Close()
	if err != nil {
		fail(fmt.Errorf("read spec: %w", err))
	}
	var hs helperSpec
	if err := json.Unmarshal(b, &hs); err != nil {
		fail(fmt.Errorf("spec: %w", err))
	}
	if err := applySpec(&hs); err != nil {
		fail(err)
	}
	fail(errors.New("exec returned")) // not reached
}

// applySpec applies hs to this process and executes the command; it
// returns only on failure.
func applySpec(hs *helperSpec) error {
	guest := func(what string, err error) error { return errdefs.Errorf(errdefs.KindGuest, "%s: %v", what, err) }
	// Limits first: raising a hard limit needs privileges dropped below.
	for _, l := range hs.Rlimits {
		if err := syscall.Setrlimit(l.Resource, &syscall.Rlimit{Cur: l.Soft, Max: l.Hard}); err != nil {
			return errdefs.Errorf(errdefs.KindInvalidArgument, "rlimit %d (soft %d, hard %d): %v", l.Resource, l.Soft, l.Hard, err)
		}
	}
	switch {
	case hs.Container != nil:
		if err := setupContainer(hs.Root, hs.Container); err != nil {
			return err
		}
	case len(hs.Join) > 0:
		if err := joinContainer(hs.Join); err != nil {
			return err
		}
	default:
		return guest("container", errors.New("a bundle process is the container's init or joins it"))
	}
	if hs.Umask >= 0 {
		unix.Umask(hs.Umask)
	}
	env := hs.Env
	pathEnv, home := defaultPath, false
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			pathEnv = v
		}
		home = home || strings.HasPrefix(e, "HOME=")
	}
	if !home {
		env = append(env, "HOME="+passwdHome(hs.UID))
	}
	if hs.Caps != nil {
		// Keep the permitted set across setuid, and drop the bounding
		// set while still privileged (both are per thread: this one,
		// locked, is the one that executes).
		if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 1, 0, 0, 0); err != nil {
			return guest("keepcaps", err)
		}
		for c := 0; c <= 63; c++ {
			if hs.Caps.Bounding&(1<<c) != 0 {
				continue
			}
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
				return guest("drop capability "+strconv.Itoa(c)+" from the bounding set", err)
			}
		}
	}
	if err := syscall.Setgroups(intSlice(hs.Groups)); err != nil {
		return guest("setgroups", err)
	}
	if err := syscall.Setgid(int(hs.GID)); err != nil {
		return guest("setgid", err)
	}
	if err := syscall.Setuid(int(hs.UID)); err != nil {
		return guest("setuid", err)
	}
	if c := hs.Caps; c != nil {
		// What this process does not hold it cannot grant (the agent, as
		// PID 1, holds them all; a test on a host may not).
		var cur [2]unix.CapUserData
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		if err := unix.Capget(&hdr, &cur[0]); err != nil {
			return guest("capget", err)
		}
		held := uint64(cur[0].Permitted) | uint64(cur[1].Permitted)<<32
		c.Effective, c.Permitted, c.Inheritable = c.Effective&held, c.Permitted&held, c.Inheritable&held
		c.Ambient &= c.Permitted & c.Inheritable
		data := [2]unix.CapUserData{
			{Effective: uint32(c.Effective), Permitted: uint32(c.Permitted), Inheritable: uint32(c.Inheritable)},
			{Effective: uint32(c.Effective >> 32), Permitted: uint32(c.Permitted >> 32), Inheritable: uint32(c.Inheritable >> 32)},
		}
		if err := unix.Capset(&unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}, &data[0]); err != nil {
			return guest("capset", err)
		}
		for n := 0; n <= lastCap; n++ {
			if c.Ambient&(1<<n) != 0 {
				if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(n), 0, 0); err != nil {
					return guest("raise ambient capability "+strconv.Itoa(n), err)
				}
			}
		}
	}
	if hs.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return guest("no_new_privs", err)
		}
	}
	if err := os.Chdir(hs.Cwd); err != nil {
		return errdefs.Errorf(errdefs.KindInvalidArgument, "working directory %s: %v", hs.Cwd, unwrapPathErr(err))
	}
	bin, err := lookPath(hs.Argv[0], pathEnv)
	if err != nil {
		return err
	}
	err = syscall.Exec(bin, hs.Argv, env)
	switch {
	case errors.Is(err, syscall.ENOENT):
		return errdefs.WithReason(errdefs.KindNotFound, errdefs.ReasonCommand, fmt.Errorf("%s: no such file or directory (or its interpreter is missing)", hs.Argv[0]))
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return errdefs.WithReason(errdefs.KindPermissionDenied, errdefs.ReasonCommand, fmt.Errorf("%s: permission denied", hs.Argv[0]))
	case errors.Is(err, syscall.ENOEXEC):
		return errdefs.WithReason(errdefs.KindPermissionDenied, errdefs.ReasonCommand, fmt.Errorf("%s: exec format error", hs.Argv[0]))
	}
	return guest("exec "+hs.Argv[0], err)
}

func unwrapPathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func intSlice(u []uint32) []int {
	out := make([]int, len(u))
	for i, v := range u {
		out[i] = int(v)
	}
	return out
}

// passwdHome is uid's home directory from /etc/passwd ("/" when none).
func passwdHome(uid uint32) string {
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return "/"
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 4<<20))
	for sc.Scan() {
		fs := strings.Split(sc.Text(), ":")
		if len(fs) >= 6 && fs[2] == strconv.FormatUint(uint64(uid), 10) && path.IsAbs(fs[5]) {
			return fs[5]
		}
	}
	return "/"
}

// shareResolvConf gives a bundle root the guest's resolver configuration
// (written when the sandbox has egress): the agent's /etc/resolv.conf is
// bind-mounted, read-only, on the root's, which is created when missing.
// A root whose /etc or /etc/resolv.conf is a symlink or not what it
// should be keeps its own file (the mount must not land elsewhere).
func shareResolvConf(root string) error {
	if _, err := os.Stat("/etc/resolv.conf"); err != nil {
		return nil // no network: nothing to share
	}
	etc, err := mountDir(root, "etc")
	if err != nil {
		return err
	}
	target := filepath.Join(etc, "resolv.conf")
	st, err := os.Lstat(target)
	switch {
	case errors.Is(err, os.ErrNotExist):
		f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, 0o644)
		if err != nil {
			return fmt.Errorf("root directory: create /etc/resolv.conf: %w", err)
		}
		f.Close()
	case err != nil:
		return fmt.Errorf("root directory: /etc/resolv.conf: %w", err)
	case !st.Mode().IsRegular():
		return fmt.Errorf("root directory: /etc/resolv.conf is a symlink or not a file; the container keeps it and has no resolver of the sandbox")
	}
	if err := unix.Mount("/etc/resolv.conf", target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("root directory: bind /etc/resolv.conf: %w", err)
	}
	return unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, "")
}
