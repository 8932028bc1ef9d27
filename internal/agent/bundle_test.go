package agent

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// TestMain lets the test binary be the exec helper, as the agent binary
// is in the guest (startBundle re-executes /proc/self/exe).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == bundleExecArg {
		bundleExecMain()
		return
	}
	os.Exit(m.Run())
}

func TestRootDirTag(t *testing.T) {
	if got := rootDirTag("quiet mvm.rootdir=mvmroot mvm.virtiofs=1"); got != "mvmroot" {
		t.Fatalf("rootDirTag = %q", got)
	}
	if got := rootDirTag("quiet"); got != "" {
		t.Fatalf("rootDirTag = %q", got)
	}
	if rootDirHostname("mvm.rootdir_hostname=pod-1") != "pod-1" {
		t.Fatal("mvm.rootdir_hostname= not parsed")
	}
	for _, bad := range []string{"mvm.rootdir_hostname=", "mvm.rootdir_hostname=-x", "mvm.rootdir_hostname=a.b", "mvm.rootdir_hostname=" + strings.Repeat("a", 64)} {
		if h := rootDirHostname(bad); h != "" {
			t.Errorf("%q gave hostname %q", bad, h)
		}
	}
	if !rootDirReadOnly("mvm.rootdir=x mvm.rootdir_ro=1") || rootDirReadOnly("mvm.rootdir=x mvm.rootdir_ro=0") {
		t.Fatal("mvm.rootdir_ro= parsed wrong")
	}
	for _, bad := range []string{"", "a/b", "../x", "UPPER", strings.Repeat("a", 37), "a,b"} {
		if validTag(bad) {
			t.Errorf("validTag(%q)", bad)
		}
	}
}

func TestParseStat(t *testing.T) {
	st, ok := parseStat("42 (a (weird) name) S 7 42 42 0 -1")
	if !ok || st.pid != 42 || st.ppid != 7 || st.comm != "a (weird) name" {
		t.Fatalf("parseStat = %+v %v", st, ok)
	}
	for _, bad := range []string{"", "x (a) S 1", "1 a S 1", "1 (a) S", "1 (a) S x"} {
		if _, ok := parseStat(bad); ok {
			t.Errorf("parseStat(%q) accepted", bad)
		}
	}
}

// TestBundleSpecRefusals: what the host sends for a bundle process is
// checked by the agent, whatever the host checked.
func TestBundleSpecRefusals(t *testing.T) {
	ok := func() *pb.ExecStart {
		return &pb.ExecStart{Argv: []string{"/bin/true"}, Cwd: "/", Bundle: &pb.BundleProcess{Uid: 1, Gid: 1, Env: []string{"A=1"}}}
	}
	if _, err := bundleSpec(ok(), "/r", false); err != nil {
		t.Fatal(err)
	}
	if _, err := bundleSpec(ok(), "", false); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("no root directory: %v", err)
	}
	cases := map[string]func(*pb.ExecStart){
		"empty argv":      func(s *pb.ExecStart) { s.Argv = nil },
		"entrypoint":      func(s *pb.ExecStart) { s.Entrypoint = true },
		"map env":         func(s *pb.ExecStart) { s.Env = map[string]string{"A": "1"} },
		"env without =":   func(s *pb.ExecStart) { s.Bundle.Env = []string{"A"} },
		"env empty key":   func(s *pb.ExecStart) { s.Bundle.Env = []string{"=1"} },
		"env NUL":         func(s *pb.ExecStart) { s.Bundle.Env = []string{"A=\x00"} },
		"too much env":    func(s *pb.ExecStart) { s.Bundle.Env = make([]string, maxEnv+1) },
		"relative cwd":    func(s *pb.ExecStart) { s.Cwd = "tmp" },
		"long cwd":        func(s *pb.ExecStart) { s.Cwd = "/" + strings.Repeat("a", agentapi.MaxPathBytes) },
		"uid -1":          func(s *pb.ExecStart) { s.Bundle.Uid = ^uint32(0) },
		"group -1":        func(s *pb.ExecStart) { s.Bundle.AdditionalGids = []uint32{^uint32(0)} },
		"too many groups": func(s *pb.ExecStart) { s.Bundle.AdditionalGids = make([]uint32, agentapi.MaxGroups+1) },
		"umask":           func(s *pb.ExecStart) { s.Bundle.HasUmask, s.Bundle.Umask = true, 0o1000 },
		"rlimit unknown":  func(s *pb.ExecStart) { s.Bundle.Rlimits = []*pb.Rlimit{{Resource: 16}} },
		"rlimit negative": func(s *pb.ExecStart) { s.Bundle.Rlimits = []*pb.Rlimit{{Resource: -1}} },
		"rlimit twice":    func(s *pb.ExecStart) { s.Bundle.Rlimits = []*pb.Rlimit{{Resource: 7}, {Resource: 7}} },
		"soft above hard": func(s *pb.ExecStart) { s.Bundle.Rlimits = []*pb.Rlimit{{Resource: 7, Soft: 2, Hard: 1}} },
		"too many limits": func(s *pb.ExecStart) { s.Bundle.Rlimits = make([]*pb.Rlimit, maxRlimits+1) },
		"id control char": func(s *pb.ExecStart) { s.Id = "a\nb" },
		"long id":         func(s *pb.ExecStart) { s.Id = strings.Repeat("a", agentapi.MaxProcessIDBytes+1) },
		"huge terminal":   func(s *pb.ExecStart) { s.Rows = 1 << 20 },
		"unknown cap": func(s *pb.ExecStart) {
			s.Bundle.HasCapabilities, s.Bundle.CapBounding = true, 1<<(lastCap+1)
		},
		"effective not permitted": func(s *pb.ExecStart) {
			s.Bundle.HasCapabilities, s.Bundle.CapEffective = true, 1
		},
		"ambient not inheritable": func(s *pb.ExecStart) {
			s.Bundle.HasCapabilities, s.Bundle.CapPermitted, s.Bundle.CapAmbient = true, 1, 1
		},
	}
	for name, mut := range cases {
		st := ok()
		mut(st)
		if _, err := bundleSpec(st, "/r", false); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want an invalid argument", name, err)
		}
	}
}

// bundleRootfs makes a root directory with busybox and a non-root user.
func bundleRootfs(t *testing.T) string {
	t.Helper()
	testenv.NeedRoot(t, "chroot and setuid for bundle processes")
	testenv.NeedStaticBinary(t, "/bin/busybox", "busybox-static")
	root := t.TempDir()
	os.Chmod(root, 0o755)
	for _, d := range []string{"bin", "etc", "work"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	b, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "bin", "busybox"), b, 0o755)
	for _, n := range []string{"sh", "id", "env", "pwd", "cat", "sleep", "chown", "ps", "test", "touch", "hostname", "wc"} {
		os.Symlink("busybox", filepath.Join(root, "bin", n))
	}
	os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc", "group"), []byte("root:x:0:\nwheel:x:10:alice\nalice:x:1000:\n"), 0o644)
	os.WriteFile(filepath.Join(root, "notexec"), []byte("#!/bin/sh\n"), 0o644)
	return root
}

// TestBundleExec runs processes through the exec helper in a chroot on
// the host (as the guest agent does in its root directory): user, groups,
// exact env with HOME from /etc/passwd, cwd, rlimits, umask; and the
// errors of a start that cannot run.
func TestBundleExec(t *testing.T) {
	root := bundleRootfs(t)
	c, s := testClient(t, "dev")
	s.rootDir = root
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	startInit(t, c, s, nil)
	run := func(argv []string, bp *pb.BundleProcess, cwd string) (string, *agentapi.ExecResult, error) {
		var out bytes.Buffer
		res, err := c.Exec(ctx, agentapi.ExecRequest{Argv: argv, Cwd: cwd, Bundle: bp, Stdout: &out, Stderr: &out})
		return out.String(), res, err
	}
	user := func() *pb.BundleProcess {
		return &pb.BundleProcess{Uid: 1000, Gid: 1000, AdditionalGids: []uint32{10}, Env: []string{"PATH=/bin", "FOO=bar baz"}}
	}

	out, res, err := run([]string{"id"}, user(), "")
	if err != nil || res.ExitCode != 0 || !strings.Contains(out, "uid=1000(alice) gid=1000(alice)") || !strings.Contains(out, "10(wheel)") {
		t.Fatalf("id: %v %+v %q", err, res, out)
	}
	out, _, err = run([]string{"env"}, user(), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(strings.ReplaceAll(out, "\n", " ")); strings.Join(got, " ") != "PATH=/bin FOO=bar baz HOME=/home/alice" {
		t.Fatalf("env = %q", out)
	}
	out, _, err = run([]string{"pwd"}, user(), "/work")
	if err != nil || out != "/work\n" {
		t.Fatalf("pwd: %v %q", err, out)
	}
	bp := user()
	bp.Rlimits = []*pb.Rlimit{{Resource: 7, Soft: 123, Hard: 456}}
	bp.HasUmask, bp.Umask = true, 0o027
	out, _, err = run([]string{"sh", "-c", "ulimit -n; ulimit -Hn; umask; exit 7"}, bp, "")
	if err != nil || out != "123\n456\n0027\n" {
		t.Fatalf("limits: %v %q", err, out)
	}
	if _, res, _ = run([]string{"sh", "-c", "exit 7"}, user(), ""); res == nil || res.ExitCode != 7 {
		t.Fatalf("exit code: %+v", res)
	}
	// A user cannot read root's files: the credentials are real.
	os.WriteFile(filepath.Join(root, "secret"), []byte("x"), 0o600)
	if out, res, err = run([]string{"cat", "/secret"}, user(), ""); err != nil || res.ExitCode == 0 {
		t.Fatalf("cat as alice: %v %+v %q", err, res, out)
	}

	// Capabilities are applied: a user with CAP_CHOWN as an ambient
	// capability can give a file away, without it not; root without
	// CAP_CHOWN in its bounding set cannot either.
	const capChown = 1 << 0
	f := filepath.Join(root, "work", "f")
	os.WriteFile(f, nil, 0o644)
	os.Chown(f, 1000, 1000)
	if out, res, err = run([]string{"chown", "0", "/work/f"}, user(), ""); err != nil || res.ExitCode == 0 {
		t.Fatalf("chown without CAP_CHOWN: %v %+v %q", err, res, out)
	}
	bp = user()
	bp.HasCapabilities, bp.CapPermitted, bp.CapInheritable, bp.CapEffective, bp.CapAmbient, bp.CapBounding = true, capChown, capChown, capChown, capChown, capChown
	if out, res, err = run([]string{"chown", "0", "/work/f"}, bp, ""); err != nil || res.ExitCode != 0 {
		t.Fatalf("chown with an ambient CAP_CHOWN: %v %+v %q", err, res, out)
	}
	all := uint64(1)<<(lastCap+1) - 1
	rootNoChown := &pb.BundleProcess{Env: []string{"PATH=/bin"}, HasCapabilities: true,
		CapBounding: all &^ capChown, CapPermitted: all &^ capChown, CapEffective: all &^ capChown}
	if out, res, err = run([]string{"chown", "1000", "/work/f"}, rootNoChown, ""); err != nil || res.ExitCode == 0 {
		t.Fatalf("root without CAP_CHOWN: %v %+v %q", err, res, out)
	}
	if st, _ := os.Stat(f); st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("owner of /work/f: %d", st.Sys().(*syscall.Stat_t).Uid)
	}

	// Starts that cannot run say why, before anything runs.
	if _, _, err = run([]string{"nosuch"}, user(), ""); !errdefs.IsNotFound(err) || errdefs.ReasonOf(err) != errdefs.ReasonCommand {
		t.Fatalf("command not found: %v", err)
	}
	if _, _, err = run([]string{"/notexec"}, user(), ""); !errdefs.IsPermissionDenied(err) {
		t.Fatalf("not executable: %v", err)
	}
	if _, _, err = run([]string{"pwd"}, user(), "/nosuch"); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "/nosuch") {
		t.Fatalf("missing cwd: %v", err)
	}
	// The root directory is the process's root: /etc/passwd is the
	// rootfs's, not the host's.
	out, _, err = run([]string{"cat", "/etc/passwd"}, &pb.BundleProcess{Env: []string{"PATH=/bin"}}, "")
	if err != nil || !strings.Contains(out, "alice:x:1000") {
		t.Fatalf("root's view: %v %q", err, out)
	}
	// Not a bundle sandbox: refused.
	s.rootDir = ""
	if _, _, err = run([]string{"id"}, user(), ""); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("bundle process without a root directory: %v", err)
	}
}

// TestMountDirRefusesSymlinks: a rootfs whose /proc (or /dev, ...) is a
// symlink must not redirect the agent's mount onto its own tree.
func TestMountDirRefusesSymlinks(t *testing.T) {
	root := t.TempDir()
	elsewhere := t.TempDir()
	os.Symlink(elsewhere, filepath.Join(root, "proc"))
	os.WriteFile(filepath.Join(root, "dev"), nil, 0o644)
	for _, name := range []string{"proc", "dev"} {
		if _, err := mountDir(root, name); err == nil || !strings.Contains(err.Error(), "symlink or not a directory") {
			t.Errorf("mountDir(%s): %v", name, err)
		}
	}
	p, err := mountDir(root, "sys")
	if err != nil || p != filepath.Join(root, "sys") {
		t.Fatalf("mountDir(sys) = %q, %v", p, err)
	}
	if st, err := os.Lstat(p); err != nil || !st.IsDir() {
		t.Fatalf("sys not created: %v", err)
	}
}

// startInit starts a container init (sleep) with cc (nil: the defaults)
// and returns once it runs; the test's end kills it.
func startInit(t *testing.T, c *agentapi.Client, s *server, cc *pb.ContainerConfig) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		_, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"sleep", "1000"}, Stdout: &out, Stderr: &out,
			Bundle: &pb.BundleProcess{Init: true, Env: []string{"PATH=/bin"}, Container: cc}})
		done <- err
	}()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, 30*time.Second, 10*time.Millisecond, func() bool {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("init ended: %v %q", err, out.String())
		default:
		}
		return s.ctr.running()
	}, testenv.Msg("the init did not start"))
}

// TestBundleContainer: the init creates the container (mount, PID, UTS and
// IPC namespaces, pivot_root into the root, the spec's mounts, masked and
// read-only paths) and every other process joins it. Seen failing on the
// chroot-only helper (the test binary, outside the root, was reachable).
func TestBundleContainer(t *testing.T) {
	root := bundleRootfs(t)
	c, s := testClient(t, "dev")
	s.rootDir = root
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run := func(argv ...string) (string, int) {
		t.Helper()
		var out bytes.Buffer
		res, err := c.Exec(ctx, agentapi.ExecRequest{Argv: argv, Stdout: &out, Stderr: &out,
			Bundle: &pb.BundleProcess{Env: []string{"PATH=/bin"}}})
		if err != nil {
			t.Fatalf("%v: %v", argv, err)
		}
		return out.String(), int(res.ExitCode)
	}
	// Without an init, nothing runs in the root.
	if _, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"true"}, Bundle: &pb.BundleProcess{Env: []string{"PATH=/bin"}}}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("a process without a running init: %v", err)
	}
	startInit(t, c, s, nil)
	if _, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"true"}, Bundle: &pb.BundleProcess{Init: true, Env: []string{"PATH=/bin"}}}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("a second init: %v", err)
	}
	self, _ := os.Executable()
	if out, code := run("test", "-e", self); code == 0 {
		t.Errorf("the agent's binary %s is reachable from the container: %q", self, out)
	}
	if out, _ := run("cat", "/proc/1/cmdline"); out != "sleep\x001000\x00" {
		t.Errorf("PID 1 of the container is %q, want its init", out)
	}
	// The glob is expanded by the shell alone: the init and the shell.
	if out, _ := run("sh", "-c", "for p in /proc/[0-9]*; do echo ${p#/proc/} $(cat $p/comm); done"); !regexp.MustCompile(`^1 sleep\n[0-9]+ sh\n$`).MatchString(out) {
		t.Errorf("the container's processes: %q, want only its init (1) and the shell", out)
	}
	if out, code := run("wc", "-c", "/proc/timer_list"); code != 0 || !strings.HasPrefix(out, "0 ") {
		t.Errorf("masked /proc/timer_list: exit %d %q", code, out)
	}
	if out, code := run("sh", "-c", "echo x > /proc/sys/kernel/hostname"); code == 0 {
		t.Errorf("read-only /proc/sys was written: %q", out)
	}
	if out, code := run("touch", "/tmp/x", "/dev/shm/x"); code != 0 {
		t.Errorf("tmpfs mounts: exit %d %q", code, out)
	}
	if out, code := run("test", "-c", "/dev/null"); code != 0 {
		t.Errorf("/dev/null: exit %d %q", code, out)
	}
	// The UTS namespace is the container's own.
	if out, code := run("sh", "-c", "hostname inner && hostname"); code != 0 || out != "inner\n" {
		t.Errorf("hostname in the container: exit %d %q", code, out)
	}
	if h, _ := os.Hostname(); h == "inner" {
		t.Errorf("the container's hostname leaked out")
	}
	if out, _ := run("hostname"); out != "inner\n" {
		t.Errorf("a later process sees hostname %q, not the container's", out)
	}
}

func TestContainerSpecRefusals(t *testing.T) {
	if c, err := containerSpec(nil, true); err != nil || c.Cloneflags != syscall.CLONE_NEWNS|syscall.CLONE_NEWPID|syscall.CLONE_NEWUTS|syscall.CLONE_NEWIPC || !c.ReadOnlyRoot {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	c, err := containerSpec(&pb.ContainerConfig{Mounts: []*pb.ContainerMount{{Destination: "/proc", Type: "proc", Options: []string{"nosuid", "ro", "rw", "noexec", "rprivate"}}}}, false)
	if err != nil || c.Cloneflags != syscall.CLONE_NEWNS || len(c.Mounts) != 3 || c.Mounts[0].Dest != "/dev" ||
		c.Mounts[1].Flags != syscall.MS_NOSUID|syscall.MS_NOEXEC || c.Mounts[2].Type != "devpts" {
		t.Fatalf("no namespaces, one mount: %+v %v", c, err)
	}
	for name, cc := range map[string]*pb.ContainerConfig{
		"net namespace":  {Namespaces: []string{"network"}},
		"bind":           {Mounts: []*pb.ContainerMount{{Destination: "/x", Type: "bind", Source: "/etc"}}},
		"bind option":    {Mounts: []*pb.ContainerMount{{Destination: "/x", Type: "tmpfs", Options: []string{"rbind"}}}},
		"root":           {Mounts: []*pb.ContainerMount{{Destination: "/", Type: "tmpfs"}}},
		"relative":       {Mounts: []*pb.ContainerMount{{Destination: "x", Type: "tmpfs"}}},
		"dotdot":         {Mounts: []*pb.ContainerMount{{Destination: "/a/../b", Type: "tmpfs"}}},
		"comma option":   {Mounts: []*pb.ContainerMount{{Destination: "/x", Type: "tmpfs", Options: []string{"mode=1,uid=0"}}}},
		"too many":       {Mounts: make([]*pb.ContainerMount, maxMounts+1)},
		"masked root":    {MaskedPaths: []string{"/"}},
		"readonly relat": {ReadonlyPaths: []string{"proc"}},
	} {
		if _, err := containerSpec(cc, false); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want an invalid argument", name, err)
		}
	}
	if _, err := bundleSpec(&pb.ExecStart{Argv: []string{"x"}, Bundle: &pb.BundleProcess{Container: &pb.ContainerConfig{}}}, "/r", false); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a container config on a process that is not the init: %v", err)
	}
}
