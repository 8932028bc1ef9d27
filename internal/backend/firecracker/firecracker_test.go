package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// shortDir is a temp dir whose socket paths fit a sockaddr_un.
func shortDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func testSpec(dir string) backend.Spec {
	return backend.Spec{
		Name: "mvm-test", Kernel: "/k/vmlinux", Initrd: "/k/initrd.img", Cmdline: "mvm.hostname=box",
		CPUs: 2, MemoryMiB: 256, Dir: dir,
		Disks: []backend.Disk{{Path: "/img/root.ext4", ReadOnly: true}, {Path: dir + "/rw.ext4"}},
	}
}

// asJSON turns a request body into the generic form the server decoded.
func asJSON(t *testing.T, v any) map[string]any {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	return m
}

func TestBootRequestSequence(t *testing.T) {
	dir := shortDir(t)
	f := &fakeAPI{}
	srv := serveFakeAPI(t, filepath.Join(dir, APISocket), f)
	defer srv.Close()
	spec := testSpec(dir)
	c := newAPIClient(dir, APISocket)
	for _, r := range BootRequests(spec) {
		if err := c.do(context.Background(), r.Method, r.Path, r.Body); err != nil {
			t.Fatal(err)
		}
	}
	want := []recorded{
		{"PUT", "/machine-config", map[string]any{"vcpu_count": 2.0, "mem_size_mib": 256.0}},
		{"PUT", "/boot-source", map[string]any{
			"kernel_image_path": "/k/vmlinux", "initrd_path": "/k/initrd.img",
			"boot_args": "console=ttyS0 reboot=k panic=1 pci=off mvm.hostname=box"}},
		{"PUT", "/drives/disk0", map[string]any{"drive_id": "disk0", "path_on_host": "/img/root.ext4", "is_root_device": false, "is_read_only": true}},
		// the sandbox's own disk is named relative to firecracker's working
		// directory, the sandbox directory (so a saved state names it so)
		{"PUT", "/drives/disk1", map[string]any{"drive_id": "disk1", "path_on_host": "rw.ext4", "is_root_device": false, "is_read_only": false}},
		{"PUT", "/vsock", map[string]any{"guest_cid": 3.0, "uds_path": "vsock.sock"}},
		{"PUT", "/actions", map[string]any{"action_type": "InstanceStart"}},
	}
	if got := f.requests(); !reflect.DeepEqual(got, want) {
		t.Fatalf("requests:\n got %#v\nwant %#v", got, want)
	}
}

func TestBootSourceWithoutInitrdOmitsIt(t *testing.T) {
	spec := testSpec("/d")
	spec.Initrd, spec.Cmdline = "", ""
	got := asJSON(t, BootRequests(spec)[1].Body)
	want := map[string]any{"kernel_image_path": "/k/vmlinux", "boot_args": KernelCmdline}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("boot-source %v, want %v", got, want)
	}
}

func TestAPIFaultMessageIsTheError(t *testing.T) {
	dir := shortDir(t)
	f := &fakeAPI{fail: map[string]string{"PUT /boot-source": "The kernel file cannot be opened: No such file or directory (os error 2)"}}
	srv := serveFakeAPI(t, filepath.Join(dir, APISocket), f)
	defer srv.Close()
	c := newAPIClient(dir, APISocket)
	err := c.do(context.Background(), "PUT", "/boot-source", bootSource{KernelImagePath: "/nope"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"PUT /boot-source", "The kernel file cannot be opened", "HTTP 400"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestFaultMessageBounded(t *testing.T) {
	msg := faultMessage(500, []byte(strings.Repeat("x", 100000)))
	if len(msg) > 1100 || !strings.HasPrefix(msg, "HTTP 500: xxx") {
		t.Fatalf("unbounded or unexpected: %d %q", len(msg), msg[:20])
	}
	if got := faultMessage(400, []byte(`{"fault_message":"bad vcpu"}`)); got != "bad vcpu (HTTP 400)" {
		t.Fatal(got)
	}
	if got := faultMessage(404, nil); got != "HTTP 404" {
		t.Fatal(got)
	}
}

func TestPauseResumeBodies(t *testing.T) {
	dir := shortDir(t)
	f := &fakeAPI{phase: phaseRunning}
	srv := serveFakeAPI(t, filepath.Join(dir, APISocket), f)
	defer srv.Close()
	m := &Machine{dir: dir, api: newAPIClient(dir, APISocket)}
	if err := m.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []recorded{
		{"PATCH", "/vm", map[string]any{"state": "Paused"}},
		{"PATCH", "/vm", map[string]any{"state": "Resumed"}},
	}
	if got := f.requests(); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
}

func TestCheckRejectsNetworkAndBadSizes(t *testing.T) {
	spec := testSpec("/d")
	spec.Network = &backend.Network{Restrict: true}
	if err := check(spec); err == nil || !strings.Contains(err.Error(), "networking is not supported") {
		t.Fatalf("network: %v", err)
	}
	spec = testSpec("/d")
	spec.CPUs = 0
	if err := check(spec); err == nil {
		t.Fatal("0 cpus accepted")
	}
	for _, name := range []string{"", "mvm_x", "mvm x", strings.Repeat("a", 65)} {
		spec = testSpec("/d")
		spec.Name = name
		if err := check(spec); err == nil || !strings.Contains(err.Error(), "instance id") {
			t.Errorf("name %q: %v", name, err)
		}
	}
}

func TestStartMissingBinary(t *testing.T) {
	t.Setenv("MVM_FIRECRACKER", "/nonexistent/firecracker")
	_, err := Start(context.Background(), testSpec(shortDir(t)))
	if err == nil || !strings.Contains(err.Error(), Unavailable) {
		t.Fatalf("error %v, want it to contain %q", err, Unavailable)
	}
	t.Setenv("MVM_FIRECRACKER", "")
	t.Setenv("PATH", shortDir(t))
	_, err = Start(context.Background(), testSpec(shortDir(t)))
	if err == nil || !strings.Contains(err.Error(), Unavailable) {
		t.Fatalf("error %v without firecracker on PATH", err)
	}
}

func TestVsockDial(t *testing.T) {
	dir := shortDir(t)
	l, err := net.Listen("unix", filepath.Join(dir, VsockSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go fakeGuest(l, func() bool { return true }, "MVM-HELLO 1\n")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := dialVsock(ctx, dir, VsockSocket, 5252, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// What the guest sent right after OK is still there for the handshake.
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != "MVM-HELLO 1\n" {
		t.Fatalf("first guest line %q, %v", line, err)
	}
}

func TestVsockDialRetriesUntilGuestListens(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, VsockSocket)
	var tries atomic.Int32
	ready := func() bool { return tries.Add(1) > 3 }
	// The socket appears only after a while, then refuses three times.
	go func() {
		time.Sleep(50 * time.Millisecond)
		l, err := net.Listen("unix", path)
		if err != nil {
			return
		}
		t.Cleanup(func() { l.Close() })
		fakeGuest(l, ready, "")
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := dialVsock(ctx, dir, VsockSocket, 5252, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if n := tries.Load(); n != 4 {
		t.Fatalf("%d connection attempts reached the guest, want 4", n)
	}
}

func TestVsockDialGivesUpAtDeadline(t *testing.T) {
	dir := shortDir(t)
	l, err := net.Listen("unix", filepath.Join(dir, VsockSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go fakeGuest(l, func() bool { return false }, "")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = dialVsock(ctx, dir, VsockSocket, 5252, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
}

func TestVsockDialStopsWhenVMMExits(t *testing.T) {
	done := make(chan struct{})
	close(done)
	_, err := dialVsock(context.Background(), shortDir(t), VsockSocket, 5252, done)
	if err == nil || !strings.Contains(err.Error(), "vmm exited") {
		t.Fatalf("err %v", err)
	}
}

// serveReply accepts connections on a vsock socket in a new directory,
// which it returns, and answers each with reply after reading the CONNECT
// line.
func serveReply(t *testing.T, reply func(net.Conn)) string {
	dir := shortDir(t)
	path := filepath.Join(dir, VsockSocket)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				bufio.NewReader(c).ReadString('\n')
				reply(c)
			}()
		}
	}()
	return dir
}

// holdOpen keeps a connection open until the client closes it.
func holdOpen(c net.Conn) { io.Copy(io.Discard, c) }

func TestVsockDialEndlessLineIsBounded(t *testing.T) {
	dir := serveReply(t, func(c net.Conn) {
		chunk := []byte(strings.Repeat("A", 4096))
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := dialVsock(ctx, dir, VsockSocket, 5252, nil)
	if !errors.Is(err, errProtocol) || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("err %v", err)
	}
}

func TestVsockDialRejectsBadAnswer(t *testing.T) {
	for _, answer := range []string{"NOPE\n", "OK\n", "OK x\n", "ok 5\n"} {
		dir := serveReply(t, func(c net.Conn) { io.WriteString(c, answer); holdOpen(c) })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := dialVsock(ctx, dir, VsockSocket, 5252, nil)
		cancel()
		if !errors.Is(err, errProtocol) {
			t.Errorf("answer %q: err %v", answer, err)
		}
	}
}

// TestVsockDialSilentPeerEndsWithContext: a peer that accepts and never
// answers cannot hold the dial past its context: the outcome is the
// context's error (timing is for benchmarks, not asserted here).
func TestVsockDialSilentPeerEndsWithContext(t *testing.T) {
	dir := serveReply(t, holdOpen)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := dialVsock(ctx, dir, VsockSocket, 5252, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the context's deadline", err)
	}
}

// TestLifecycleWithFakeFirecracker runs Start, DialChannel, Pause/Resume
// and Stop against the test binary playing Firecracker.
func TestLifecycleWithFakeFirecracker(t *testing.T) {
	t.Setenv("MVM_FIRECRACKER", os.Args[0])
	t.Setenv("MVM_FAKE_FIRECRACKER", "1")
	dir := shortDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := Start(ctx, testSpec(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	if m.Accel() != "kvm" || m.Pid() <= 0 {
		t.Fatalf("accel %q pid %d", m.Accel(), m.Pid())
	}
	conn, err := m.DialChannel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if line != "MVM-HELLO 1\n" {
		t.Fatalf("hello %q %v", line, err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("not done after Stop")
	}
	if err := m.ExitErr(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	b, _ := os.ReadFile(m.ConsolePath())
	if !strings.Contains(string(b), "serial console") {
		t.Fatalf("console %q", b)
	}
}

func TestStartSurfacesFaultAndKills(t *testing.T) {
	t.Setenv("MVM_FIRECRACKER", os.Args[0])
	t.Setenv("MVM_FAKE_FIRECRACKER", "1")
	t.Setenv("MVM_FAKE_FAIL", "PUT /machine-config=Invalid Memory Configuration: MemoryError")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Start(ctx, testSpec(shortDir(t)))
	if err == nil || !strings.Contains(err.Error(), "PUT /machine-config: Invalid Memory Configuration") {
		t.Fatalf("err %v", err)
	}
}

func TestStartVMMThatNeverListens(t *testing.T) {
	dir := shortDir(t)
	bin := filepath.Join(dir, "firecracker")
	os.WriteFile(bin, []byte("#!/bin/sh\necho 'Error: KVM is not available' >&2\nexit 1\n"), 0o755)
	t.Setenv("MVM_FIRECRACKER", bin)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Start(ctx, testSpec(dir))
	if err == nil || !strings.Contains(err.Error(), "vmm exited") || !strings.Contains(err.Error(), "KVM is not available") {
		t.Fatalf("err %v", err)
	}
}

// TestFakeRejectsWhatFirecrackerRejects: the fake API is only a check if
// it can say no. Each body below breaks the documented shape once.
func TestFakeRejectsWhatFirecrackerRejects(t *testing.T) {
	bad := []struct {
		method, path string
		body         map[string]any
		want         string
	}{
		{"PUT", "/machine-config", map[string]any{"vcpu_count": 2}, "missing field `mem_size_mib`"},
		{"PUT", "/machine-config", map[string]any{"vcpu_count": 0, "mem_size_mib": 128}, "out of range"},
		{"PUT", "/machine-config", map[string]any{"vcpu_count": 33, "mem_size_mib": 128}, "out of range"},
		{"PUT", "/machine-config", map[string]any{"vcpu_count": "2", "mem_size_mib": 128}, "expected an integer"},
		{"PUT", "/machine-config", map[string]any{"vcpu_count": 2, "mem_size_mib": 128, "memory": 1}, "unknown field `memory`"},
		{"PUT", "/boot-source", map[string]any{"boot_args": "x"}, "missing field `kernel_image_path`"},
		{"PUT", "/drives/disk0", map[string]any{"drive_id": "disk0", "path_on_host": "/x"}, "missing field `is_root_device`"},
		{"PUT", "/drives/disk0", map[string]any{"drive_id": "disk1", "is_root_device": false}, "does not match"},
		{"PUT", "/drives/disk0", map[string]any{"drive_id": "disk0", "is_root_device": "no"}, "expected a boolean"},
		{"PUT", "/vsock", map[string]any{"guest_cid": 2, "uds_path": "v.sock"}, "out of range"},
		{"PUT", "/vsock", map[string]any{"guest_cid": 3}, "missing field `uds_path`"},
		{"PUT", "/actions", map[string]any{"action_type": "Reboot"}, "unknown variant"},
		{"PATCH", "/vm", map[string]any{"state": "Stopped"}, "unknown variant"},
		{"PUT", "/vm", map[string]any{"state": "Paused"}, "Invalid request method"},
		{"PUT", "/network-interfaces/eth0", map[string]any{"iface_id": "eth0"}, "Invalid request method"},
	}
	dir := shortDir(t)
	f := &fakeAPI{}
	srv := serveFakeAPI(t, filepath.Join(dir, APISocket), f)
	defer srv.Close()
	c := newAPIClient(dir, APISocket)
	for _, b := range bad {
		err := c.do(context.Background(), b.method, b.path, b.body)
		if err == nil || !strings.Contains(err.Error(), b.want) || !strings.Contains(err.Error(), "HTTP 400") {
			t.Errorf("%s %s %v: err %v, want a 400 saying %q", b.method, b.path, b.body, err, b.want)
		}
	}
	if n := len(f.requests()); n != 0 {
		t.Fatalf("%d invalid requests were accepted", n)
	}
}

// TestBootRequestsMatchTheAPIShapes: every request mvm sends, for specs
// with and without initrd, read-only and writable disks, passes the
// documented shapes.
func TestBootRequestsMatchTheAPIShapes(t *testing.T) {
	specs := []backend.Spec{testSpec("/d"), {Name: "mvm-x", Kernel: "/k", CPUs: 1, MemoryMiB: 64}}
	for _, spec := range specs {
		reqs := append(BootRequests(spec),
			Request{"PATCH", "/vm", vmState{State: "Paused"}},
			Request{"PATCH", "/vm", vmState{State: "Resumed"}},
			Request{"PUT", "/actions", action{ActionType: "SendCtrlAltDel"}})
		for _, r := range reqs {
			if err := validateRequest(r.Method, r.Path, asJSON(t, r.Body)); err != nil {
				t.Errorf("%s: %v", r, err)
			}
		}
	}
}

// TestArgsCarryTheVMMTag: the sandbox's VMM tag is on Firecracker's
// command line (--id), and the paths are relative to its working
// directory.
func TestArgsCarryTheVMMTag(t *testing.T) {
	got := Args(sandbox.VMMTag("0123456789ab"))
	want := []string{"--id", "mvm-0123456789ab", "--api-sock", APISocket, "--log-path", VMMLog, "--level", "Warning"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("args %q, want %q", got, want)
	}
}

// TestStartedVMMIsRecognisedByTag: `down` and `ls` find a leftover
// Firecracker by pid and VMM tag (sandbox.ProcessAlive); before --id the
// tag was nowhere on its command line and a leftover was never seen.
func TestStartedVMMIsRecognisedByTag(t *testing.T) {
	t.Setenv("MVM_FIRECRACKER", os.Args[0])
	t.Setenv("MVM_FAKE_FIRECRACKER", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	spec := testSpec(shortDir(t))
	spec.Name = sandbox.VMMTag("0123456789ab")
	m, err := Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	// Right after exec the kernel may not have set up the new command
	// line yet (/proc/PID/cmdline reads empty): poll for the tag.
	testenv.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool { return sandbox.ProcessAlive(m.Pid(), sandbox.VMMTag("0123456789ab")) },
		testenv.Msg("the running VMM to be recognised by its tag"))
	if sandbox.ProcessAlive(m.Pid(), sandbox.VMMTag("ba9876543210")) {
		t.Fatal("the VMM is taken for another sandbox's")
	}
	m.Kill()
	if sandbox.ProcessAlive(m.Pid(), sandbox.VMMTag("0123456789ab")) {
		t.Fatal("a killed VMM is still alive")
	}
}

// TestLongSandboxDir: the sandbox directory's path may be longer than a
// socket address; Firecracker binds its sockets by relative name in it
// and the host reaches them through the directory. (The old length check
// looked at "./fc.sock", so it never fired, and an absolute directory this
// long could not have worked.)
func TestLongSandboxDir(t *testing.T) {
	t.Setenv("MVM_FIRECRACKER", os.Args[0])
	t.Setenv("MVM_FAKE_FIRECRACKER", "1")
	dir := filepath.Join(shortDir(t), strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if n := len(filepath.Join(dir, VsockSocket)); n <= backend.MaxSocketPath {
		t.Fatalf("test dir too short: %d", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := Start(ctx, testSpec(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	conn, err := m.DialChannel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if line != "MVM-HELLO 1\n" {
		t.Fatalf("hello %q %v", line, err)
	}
	if err := m.Stop(ctx); err != nil || m.ExitErr() != nil {
		t.Fatalf("stop: %v, exit %v", err, m.ExitErr())
	}
}
