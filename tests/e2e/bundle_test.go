package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// syncBuffer is a bytes.Buffer safe for a writer and a poller.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// bundleRuntime is the runtime API (as the containerd shim calls it) on
// this test's state and data directories, with the binaries under test.
func bundleRuntime(t *testing.T, e *env) *runtime.Runtime {
	t.Setenv("MVM_STATE_DIR", e.state)
	t.Setenv("MVM_DATA_DIR", e.data)
	d := paths.FromEnv()
	return &runtime.Runtime{Dirs: d, Layout: sandbox.Layout{Root: d.State},
		Exe: filepath.Join(binDir, "mvmctl"), Agent: filepath.Join(binDir, "mvm-agent")}
}

// makeBundleRootfs writes an OCI bundle's rootfs as a test would get it
// from a snapshotter: busybox-static, a non-root user, a directory the
// user owns.
func makeBundleRootfs(t *testing.T) string {
	t.Helper()
	testenv.NeedRoot(t, "virtiofsd confines itself with namespaces")
	testenv.NeedStaticBinary(t, "/bin/busybox", "busybox-static")
	rootfs := filepath.Join(t.TempDir(), "bundle", "rootfs")
	for _, d := range []string{"bin", "etc", "work"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Dir(rootfs), 0o755)
	os.Chmod(filepath.Dir(filepath.Dir(rootfs)), 0o755)
	b, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), b, 0o755)
	for _, n := range []string{"sh", "id", "cat", "sleep", "pwd", "grep", "stty", "tty", "test", "touch", "env", "ls", "hostname", "readlink"} {
		os.Symlink("busybox", filepath.Join(rootfs, "bin", n))
	}
	os.WriteFile(filepath.Join(rootfs, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(rootfs, "etc", "group"), []byte("root:x:0:\nwheel:x:10:alice\nalice:x:1000:\n"), 0o644)
	os.Chown(filepath.Join(rootfs, "work"), 1000, 1000)
	return rootfs
}

// TestBundle is issue 16's guest side on a real microVM: a sandbox whose
// root is a host directory (virtiofs, read-write), processes from OCI
// process specs (user, groups, env, cwd, rlimits, no_new_privs, exit
// codes, binary stdin, a terminal with resize and CloseStdin, a second
// process, signals to one and to all, pids, init semantics, stats), the
// plan's record of the root, `ls` labels; and after Down no QEMU, no
// virtiofsd, no mount is left.
func TestBundle(t *testing.T) {
	e := newEnv(t)
	rt := bundleRuntime(t, e)
	rootfs := makeBundleRootfs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Refusals before anything boots: nothing is created.
	if _, err := rt.UpBundle(ctx, runtime.BundleOptions{Name: "nope", RootDir: filepath.Join(rootfs, "missing")}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("missing root directory: %v", err)
	}
	if _, err := rt.UpBundle(ctx, runtime.BundleOptions{Name: "nope", RootDir: rootfs, Allow: []string{"example.com:443"}}); !errdefs.IsRefused(err) {
		t.Fatalf("egress under the restrictive default: %v", err)
	}
	if d := e.sandboxDirs(); len(d) > 0 {
		t.Fatalf("refused bundles left state: %v", d)
	}

	sb, err := rt.UpBundle(ctx, runtime.BundleOptions{Name: "bndl", RootDir: rootfs, BundleDir: filepath.Dir(rootfs), Hostname: "pod-1",
		Labels: map[string]string{runtime.LabelContainerdNamespace: "default", runtime.LabelContainerdID: "c1"}})
	if err != nil {
		t.Fatalf("UpBundle: %v", err)
	}
	defer rt.Down(context.Background(), "bndl")
	if sb.Plan.RunProfile != "restrictive" || sb.Plan.Network.Mode != "none" || sb.Plan.RootDir == nil ||
		sb.Plan.RootDir.HostPath != rootfs || sb.Plan.RootDir.BundleDir != filepath.Dir(rootfs) {
		t.Fatalf("plan: profile %s network %s root %+v", sb.Plan.RunProfile, sb.Plan.Network.Mode, sb.Plan.RootDir)
	}
	var ls []map[string]any
	if err := json.Unmarshal([]byte(e.must("ls", "--json").stdout), &ls); err != nil || len(ls) != 1 {
		t.Fatalf("ls --json: %v %v", err, ls)
	}
	if l, _ := ls[0]["labels"].(map[string]any); l[runtime.LabelContainerdID] != "c1" || ls[0]["root_dir"] != rootfs {
		t.Fatalf("ls --json row: %v", ls[0])
	}
	if out := e.must("ls").stdout; !strings.Contains(out, "io.containerd.id=c1,io.containerd.namespace=default") {
		t.Fatalf("ls: %s", out)
	}

	start := func(spec runtime.ProcessSpec, io runtime.ProcessIO) *runtime.ProcessStatus {
		t.Helper()
		st, err := rt.StartProcess(ctx, "bndl", spec, io)
		if err != nil {
			t.Fatalf("start %s: %v", spec.ID, err)
		}
		if st.Pid <= 1 {
			t.Fatalf("start %s: pid %d", spec.ID, st.Pid)
		}
		return st
	}
	wait := func(id string) *runtime.ProcessStatus {
		t.Helper()
		st, err := rt.WaitProcess(ctx, "bndl", id)
		if err != nil || st.Exit == nil {
			t.Fatalf("wait %s: %v", id, err)
		}
		return st
	}
	env := []string{"PATH=/bin", "FOO=bar baz"}

	// The init process, with the container it creates (the spec's
	// namespaces, mounts, masked and read-only paths), then a second
	// process beside it, which joins that container.
	os.WriteFile(filepath.Join(rootfs, "etc", "secret"), []byte("s3cret"), 0o644)
	os.MkdirAll(filepath.Join(rootfs, "work", "hidden"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "work", "hidden", "f"), []byte("x"), 0o644)
	os.MkdirAll(filepath.Join(rootfs, "work", "ro"), 0o777)
	mnt := func(dest, typ string, opts ...string) runtime.ContainerMount {
		return runtime.ContainerMount{Destination: dest, Type: typ, Source: typ, Options: opts}
	}
	container := &runtime.ContainerSpec{Namespaces: []string{"pid", "uts", "ipc"},
		Mounts: []runtime.ContainerMount{
			mnt("/proc", "proc", "nosuid", "noexec", "nodev"),
			mnt("/dev", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
			mnt("/dev/pts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"),
			mnt("/dev/shm", "tmpfs", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
			mnt("/sys", "sysfs", "nosuid", "noexec", "nodev", "ro"),
			mnt("/run", "tmpfs", "nosuid", "nodev", "noexec", "mode=755"),
		},
		MaskedPaths:   []string{"/etc/secret", "/work/hidden", "/proc/timer_list", "/no/such/path"},
		ReadonlyPaths: []string{"/work/ro", "/proc/sys"},
	}
	var initOut syncBuffer
	start(runtime.ProcessSpec{ID: "init", Init: true, Env: env, Container: container,
		Args: []string{"sh", "-c", `trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.2; done`}},
		runtime.ProcessIO{Stdout: &initOut, Stderr: &initOut})
	waitFor(t, "init to run", time.Minute, func() bool { return strings.Contains(initOut.String(), "ready") })

	// Inside the container (a process beside the init, as root): PID 1
	// is the init and the other processes are the container's; no
	// process, root or mount of the agent's is in sight; the masked paths
	// read empty, the read-only ones refuse writes; /proc, /sys and /run
	// are mounted as the spec says. Seen failing on the chroot-only agent
	// (PID 1 was the agent, /proc/1/root its initramfs).
	var nsOut syncBuffer
	start(runtime.ProcessSpec{ID: "ns", Env: env, Args: []string{"sh", "-c", `echo "EXE1 $(readlink /proc/1/exe)"
echo "CMD1 $(cat /proc/1/cmdline)"
for p in /proc/[0-9]*; do echo "PROC $(cat $p/comm) $(readlink $p/exe)"; done
test -e /proc/1/root/init && echo AGENT-ROOT-REACHABLE
ls /proc/1/root/ | grep -qx work || echo NOT-THE-CONTAINER-ROOT
echo "SECRET[$(cat /etc/secret)]"
echo "HIDDEN[$(ls /work/hidden)]"
echo "TIMERS[$(cat /proc/timer_list | head -c 20)]"
touch /work/ro/f 2>/dev/null || echo RO-REFUSED
echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null || echo PROCSYS-REFUSED
touch /work/rw && echo RW-OK
echo "HOST $(hostname)"
cat /proc/self/mountinfo`}}, runtime.ProcessIO{Stdout: &nsOut, Stderr: &nsOut})
	if st := wait("ns"); st.Exit.Code != 0 {
		t.Fatalf("ns: exit %+v: %q", st.Exit, nsOut.String())
	}
	nsText := nsOut.String()
	for _, want := range []string{"EXE1 /bin/busybox\n", "CMD1 sh-ctrap 'echo got TERM", "SECRET[]\n", "HIDDEN[]\n", "TIMERS[]\n",
		"RO-REFUSED\n", "PROCSYS-REFUSED\n", "RW-OK\n", "HOST pod-1\n",
		" / rw,nosuid,nodev", " /proc rw,nosuid,nodev,noexec", " /sys ro,nosuid,nodev,noexec", " /run rw,nosuid,nodev,noexec", " /dev/pts rw,nosuid,noexec"} {
		if !strings.Contains(nsText, want) {
			t.Errorf("in the container: output lacks %q:\n%s", want, nsText)
		}
	}
	for _, bad := range []string{"AGENT-ROOT-REACHABLE", "NOT-THE-CONTAINER-ROOT", "/run/mvm", "mvm-agent", "/init"} {
		if strings.Contains(nsText, bad) {
			t.Errorf("in the container: output has %q:\n%s", bad, nsText)
		}
	}
	for _, line := range strings.Split(nsText, "\n") {
		// The init's sleep may be gone by the time it is read (no comm,
		// or no exe); a kernel thread has a comm and no exe.
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == "PROC" && (len(f) == 3 && f[2] != "/bin/busybox" || len(f) == 2 && f[1] != "sleep" || len(f) > 3) {
			t.Errorf("a process that is not the container's is visible: %q", line)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(rootfs, "etc", "secret")); string(b) != "s3cret" {
		t.Errorf("the masked file changed on the host: %q", b)
	}

	// User, groups, env, cwd, rlimit, no_new_privs, exit code, and a file
	// written through the share as the user.
	var out, errb syncBuffer
	start(runtime.ProcessSpec{ID: "id", Env: env, Cwd: "/work", UID: 1000, GID: 1000, AdditionalGids: []uint32{10},
		Rlimits: []runtime.Rlimit{{Type: "RLIMIT_NOFILE", Soft: 77, Hard: 88}}, NoNewPrivileges: true,
		Args: []string{"sh", "-c", `id; echo "FOO=$FOO HOME=$HOME"; pwd; ulimit -n; grep NoNewPrivs /proc/self/status; echo DEV $(ls /dev); echo "HOST $(hostname)"; touch by-alice; echo oops >&2; exit 3`}},
		runtime.ProcessIO{Stdout: &out, Stderr: &errb})
	if st := wait("id"); st.Exit.Code != 3 || st.ReceiptID == "" {
		t.Fatalf("id: exit %+v receipt %q; stdout %q stderr %q", st.Exit, st.ReceiptID, out.String(), errb.String())
	}
	for _, want := range []string{"uid=1000(alice) gid=1000(alice)", "10(wheel)", "FOO=bar baz HOME=/home/alice", "/work\n77\n", "NoNewPrivs:\t1", "HOST pod-1\n",
		"DEV core fd full null ptmx pts random shm stderr stdin stdout tty urandom zero\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("id: stdout lacks %q: %q", want, out.String())
		}
	}
	if errb.String() != "oops\n" {
		t.Errorf("id: stderr %q", errb.String())
	}
	if fi, err := os.Stat(filepath.Join(rootfs, "work", "by-alice")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 1000 {
		t.Errorf("file written by the container: %v", err)
	}

	// Capabilities (OCI process.capabilities): root limited to CAP_CHOWN
	// and CAP_KILL; root without a capabilities spec keeps them all.
	var capsOut syncBuffer
	caps := []string{"CAP_CHOWN", "CAP_KILL"}
	start(runtime.ProcessSpec{ID: "caps", Env: env, Capabilities: &runtime.Capabilities{Bounding: caps, Effective: caps, Permitted: caps},
		Args: []string{"grep", "-E", "^Cap(Eff|Bnd)", "/proc/self/status"}}, runtime.ProcessIO{Stdout: &capsOut})
	start(runtime.ProcessSpec{ID: "allcaps", Env: env, Args: []string{"grep", "-E", "^CapEff", "/proc/self/status"}}, runtime.ProcessIO{Stdout: &capsOut})
	wait("caps")
	wait("allcaps")
	if o := capsOut.String(); !strings.Contains(o, "CapEff:\t0000000000000021\nCapBnd:\t0000000000000021\n") || !strings.Contains(o, "CapEff:\t000001ffffffffff") {
		t.Fatalf("capabilities: %q", o)
	}

	// Binary-safe stdin: every byte value, more than one chunk.
	in := make([]byte, 300<<10)
	rand.Read(in)
	var echoed syncBuffer
	start(runtime.ProcessSpec{ID: "cat", Env: env, Args: []string{"cat"}}, runtime.ProcessIO{Stdin: bytes.NewReader(in), Stdout: &echoed})
	if st := wait("cat"); st.Exit.Code != 0 || echoed.String() != string(in) {
		t.Fatalf("cat: exit %+v, %d bytes back of %d", st.Exit, len(echoed.String()), len(in))
	}

	// A terminal: its size, a resize, and CloseStdin (^D) ending it.
	pr, pw := io.Pipe()
	var ttyOut syncBuffer
	start(runtime.ProcessSpec{ID: "tty", Env: env, Terminal: true, Rows: 30, Cols: 100, UID: 1000, GID: 1000,
		Args: []string{"sh", "-c", `tty; test -t 0 && echo isatty; test -O "$(tty)" && echo owned; stty size; while read x; do stty size; done; echo bye`}},
		runtime.ProcessIO{Stdin: pr, Stdout: &ttyOut})
	waitFor(t, "the terminal's size", time.Minute, func() bool { return strings.Contains(ttyOut.String(), "30 100") })
	if err := rt.ResizePTY(ctx, "bndl", "tty", 40, 120); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the resize", time.Minute, func() bool {
		pw.Write([]byte("x\n"))
		return strings.Contains(ttyOut.String(), "40 120")
	})
	if err := rt.CloseStdin(ctx, "bndl", "tty"); err != nil {
		t.Fatal(err)
	}
	if st := wait("tty"); st.Exit.Code != 0 || !strings.Contains(ttyOut.String(), "/dev/pts/") || !strings.Contains(ttyOut.String(), "isatty") || !strings.Contains(ttyOut.String(), "owned") || !strings.Contains(ttyOut.String(), "bye") {
		t.Fatalf("tty: exit %+v output %q", st.Exit, ttyOut.String())
	}
	pw.Close()

	// Processes that end at once still start (their exit may reach the
	// host together with their start).
	for i := 0; i < 10; i++ {
		id := "quick" + strconv.Itoa(i)
		start(runtime.ProcessSpec{ID: id, Env: env, Args: []string{"sh", "-c", "exit " + strconv.Itoa(i)}}, runtime.ProcessIO{})
		if st := wait(id); st.Exit.Code != int32(i) {
			t.Fatalf("%s: %+v", id, st.Exit)
		}
	}

	// A command that does not exist fails the start, with its kind.
	if _, err := rt.StartProcess(ctx, "bndl", runtime.ProcessSpec{ID: "nosuch", Env: env, Args: []string{"nosuch"}}, runtime.ProcessIO{}); !errdefs.IsNotFound(err) {
		t.Fatalf("start of a missing command: %v", err)
	}

	// Pids: init and a sleeper, named.
	start(runtime.ProcessSpec{ID: "sleeper", Env: env, Args: []string{"sleep", "1000"}}, runtime.ProcessIO{})
	pids, err := rt.Pids(ctx, "bndl")
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, p := range pids {
		named[p.ID] = true
		if p.Pid == 1 {
			t.Errorf("pids lists the agent: %+v", p)
		}
	}
	if !named["init"] || !named["sleeper"] {
		t.Fatalf("pids: %+v", pids)
	}
	if st, err := rt.Stats(ctx, "bndl"); err != nil || st.MemTotalBytes == 0 || st.CPUUserUsec+st.CPUSystemUsec == 0 {
		t.Fatalf("stats: %+v %v", st, err)
	}

	// A signal to init; its exit kills the rest (the sleeper).
	if err := rt.SignalProcess(ctx, "bndl", "init", int(syscall.SIGTERM), false); err != nil {
		t.Fatal(err)
	}
	if st := wait("init"); st.Exit.Code != 42 || !strings.Contains(initOut.String(), "got TERM") {
		t.Fatalf("init after SIGTERM: %+v %q", st.Exit, initOut.String())
	}
	if st := wait("sleeper"); st.Exit.Signal != int32(syscall.SIGKILL) {
		t.Fatalf("sleeper after init exited: %+v", st.Exit)
	}
	if err := rt.SignalProcess(ctx, "bndl", "init", int(syscall.SIGTERM), false); !errdefs.IsNotFound(err) {
		t.Fatalf("signal to an exited process: %v", err)
	}
	// With the init gone, nothing else starts: there is no container to
	// join.
	if _, err := rt.StartProcess(ctx, "bndl", runtime.ProcessSpec{ID: "late", Env: env, Args: []string{"true"}}, runtime.ProcessIO{}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("a process after the init exited: %v", err)
	}
	// Signal all, in a new container (mvm's default one).
	start(runtime.ProcessSpec{ID: "init2", Init: true, Env: env, Args: []string{"sleep", "1000"}}, runtime.ProcessIO{})
	start(runtime.ProcessSpec{ID: "s1", Env: env, Args: []string{"sleep", "1000"}}, runtime.ProcessIO{})
	start(runtime.ProcessSpec{ID: "s2", Env: env, Args: []string{"sh", "-c", "sleep 1000"}}, runtime.ProcessIO{})
	if err := rt.SignalProcess(ctx, "bndl", "", int(syscall.SIGKILL), true); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"init2", "s1", "s2"} {
		if st := wait(id); st.Exit.Code != 137 {
			t.Fatalf("%s after signal all: %+v", id, st.Exit)
		}
	}
	if _, err := rt.DeleteProcess(ctx, "bndl", "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.WaitProcess(ctx, "bndl", "s1"); !errdefs.IsNotFound(err) {
		t.Fatalf("wait after delete: %v", err)
	}

	// Down: no QEMU, no virtiofsd, no mount left; the root directory is
	// the host's and stays.
	if err := rt.Down(ctx, "bndl"); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
	waitFor(t, "virtiofsd to exit", 10*time.Second, func() bool { return len(processesMentioning(rootfs)) == 0 })
	if b, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(b, []byte(rootfs)) {
		t.Fatalf("a mount of the root directory is left on the host")
	}
	if _, err := os.Stat(filepath.Join(rootfs, "bin", "busybox")); err != nil {
		t.Fatalf("root directory damaged: %v", err)
	}
}

// processesMentioning lists pids whose command line holds s.
func processesMentioning(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestBundleEgress: a bundle sandbox under the standard profile with an
// allowlist (the shim's io.mvm.allow) gets a NIC, and the container's
// processes, in their own root, resolve and reach the allowed name (the
// guest's resolver is bound on the root's /etc/resolv.conf, read-only)
// and not another. Its root is read-only (root.readonly): even root cannot
// write it, /tmp stays writable.
func TestBundleEgress(t *testing.T) {
	e := newEnv(t)
	rt := bundleRuntime(t, e)
	rootfs := makeBundleRootfs(t)
	for _, n := range []string{"nc", "nslookup", "sed", "tail"} {
		os.Symlink("busybox", filepath.Join(rootfs, "bin", n))
	}
	const marker = "hello-from-the-allowed-server"
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, marker) }))
	defer web.Close()
	hosts := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 ok.test bad.test\n"), 0o644)
	t.Setenv("MVM_NET_HOSTS", hosts)
	wp := port(web.Listener.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	sb, err := rt.UpBundle(ctx, runtime.BundleOptions{Name: "egress", RootDir: rootfs, Profile: "standard", Allow: []string{"ok.test:" + wp}, ReadOnlyRoot: true})
	if err != nil {
		t.Fatalf("UpBundle: %v", err)
	}
	defer rt.Down(context.Background(), "egress")
	if sb.Plan.Network.Mode != "allowlist" || sb.Plan.RootDir == nil || !sb.Plan.RootDir.ReadOnly {
		t.Fatalf("plan network: %+v", sb.Plan.Network)
	}
	var out syncBuffer
	// busybox's own resolver (nslookup) and nc, as TestNetworkAllowlist
	// does: a static glibc busybox's wget cannot resolve without NSS.
	script := `cat /etc/resolv.conf
ip=$(nslookup ok.test | sed -n 's/^Address:[ \t]*\(10\.0\.2\.[0-9]*\).*/\1/p' | tail -1)
echo "IP=$ip"
printf 'GET / HTTP/1.0\r\nHost: ok.test:` + wp + `\r\n\r\n' | nc -w 10 "$ip" ` + wp + `
echo
if nslookup bad.test >/dev/null 2>&1; then echo BAD-RESOLVED; fi
echo > /etc/resolv.conf 2>/dev/null || echo ro
touch /rootfile 2>/dev/null || echo rootro
touch /tmp/x && echo tmprw`
	if _, err := rt.StartProcess(ctx, "egress", runtime.ProcessSpec{ID: "w", Init: true, Env: []string{"PATH=/bin"}, Args: []string{"sh", "-c", script}},
		runtime.ProcessIO{Stdout: &out, Stderr: &out}); err != nil {
		t.Fatal(err)
	}
	if st, err := rt.WaitProcess(ctx, "egress", "w"); err != nil || st.Exit.Code != 0 {
		t.Fatalf("wait: %v %+v: %q", err, st, out.String())
	}
	if o := out.String(); !strings.Contains(o, "nameserver 127.0.0.1") || !strings.Contains(o, marker) || strings.Contains(o, "BAD-RESOLVED") || !strings.Contains(o, "\nro\nrootro\ntmprw\n") {
		t.Fatalf("container egress: %q", o)
	}
	if b, err := os.ReadFile(filepath.Join(rootfs, "etc", "resolv.conf")); err != nil || len(b) != 0 {
		t.Fatalf("the host's rootfs got the guest's resolver written into it: %q %v", b, err)
	}
	if err := rt.Down(ctx, "egress"); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}
