package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/guestid"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// guestClock reads the guest's wall clock with one exec and brackets it
// with the host's clock before and after: the guest is "within tol of the
// host" when its reading falls inside [before-tol, after+tol]. The exec's
// own latency is inside the bracket, so a slow run cannot fail the check,
// and a guest clock that is off by more than tol always does.
func (e *env) guestClock(name string, tol time.Duration) (guest, before, after time.Time, ok bool) {
	e.t.Helper()
	before = time.Now()
	r := e.must("exec", name, "--", "date", "+%s")
	after = time.Now()
	sec, err := strconv.ParseInt(strings.TrimSpace(r.stdout), 10, 64)
	if err != nil {
		e.t.Fatalf("guest date: %v: %s", err, r)
	}
	guest = time.Unix(sec, 0)
	// date +%s truncates to the second: one more second of slack below.
	ok = !guest.Before(before.Add(-tol-time.Second)) && !guest.After(after.Add(tol))
	return guest, before, after, ok
}

// TestRestoredIdentityFreshVM drives the Restored RPC on a real guest (a
// freshly booted one: what a restore path calls right after restoring).
// It checks that the guest takes the new hostname (kernel, /etc/hostname,
// HOSTNAME of new processes), machine-id and MAC, that a clock set far in
// the past is brought within 1 s of the host, and that the network still
// works both ways after the MAC change (egress through the allowlist, a
// published port inbound). A request the agent must refuse changes
// nothing.
func TestRestoredIdentityFreshVM(t *testing.T) {
	e := newEnv(t)
	defer func() {
		e.run("down", "--all")
		e.assertClean()
	}()
	wp := e.hostWebServer()
	pub := freePort(t)
	e.must("up", "--name", "idn", "--allow", "ok.test:"+wp, "-p", pub+":8000")
	sh := func(script string) result { return e.run("exec", "idn", "--", "sh", "-c", script) }
	e.must("exec", "idn", "--", "sh", "-c", "mkdir -p /www && echo guest-page > /www/index.html && httpd -p 8000 -h /www")
	fetch := func() (string, error) {
		c := http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get("http://127.0.0.1:" + pub + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}
	if body, err := fetch(); err != nil || !strings.Contains(body, "guest-page") {
		t.Fatalf("published port before: %q %v", body, err)
	}
	before := sh("hostname; cat /etc/machine-id 2>/dev/null; cat /sys/class/net/eth0/address")
	// The snapshot's clock: far in the past.
	e.must("exec", "idn", "--", "date", "-s", "@1000000000")
	if _, _, _, ok := e.guestClock("idn", time.Second); ok {
		t.Fatal("setting the guest clock back did not take")
	}

	c := e.agentDirect("idn")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Refused: a hostname outside the label charset, sent past the host's
	// own check. Nothing may change.
	id, err := guestid.New("renamed", true)
	if err != nil {
		t.Fatal(err)
	}
	bad := id
	bad.Hostname = "evil;reboot"
	if _, err := c.Agent.Restored(ctx, restoredRequest(bad)); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad hostname: %v, want invalid argument", err)
	}
	if r := sh("hostname"); strings.TrimSpace(r.stdout) != "idn" {
		t.Fatalf("refused request changed the hostname: %s", r)
	}
	if _, err := c.Restored(ctx, bad); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("host-side check: %v", err)
	}

	id.UnixNanos = time.Now().UnixNano()
	rep, err := c.Restored(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.NIC || !rep.HostnameFile || rep.ClockStep < 20*365*24*time.Hour {
		t.Errorf("report %+v: want the NIC, /etc/hostname and a clock step of decades", rep)
	}
	after := sh(`hostname; cat /etc/hostname; echo "$HOSTNAME"; cat /etc/machine-id; cat /sys/class/net/eth0/address`)
	want := fmt.Sprintf("renamed\nrenamed\nrenamed\n%s\n%s\n", id.MachineID, id.MAC)
	if after.code != 0 || after.stdout != want {
		t.Errorf("guest identity after Restored:\n%q\nwant\n%q\n(before: %q)", after.stdout, want, before.stdout)
	}
	if g, b, a, ok := e.guestClock("idn", time.Second); !ok {
		t.Errorf("guest clock %s not within 1s of the host's [%s, %s]", g, b, a)
	}
	// The network after the MAC change: inbound and egress.
	var body string
	if !testenv.Poll(60*time.Second, 200*time.Millisecond, func() bool {
		body, err = fetch()
		return err == nil && strings.Contains(body, "guest-page")
	}) {
		t.Errorf("published port after the MAC change: %q %v", body, err)
	}
	// (busybox's static wget cannot resolve names: nslookup, then nc.)
	// A lookup goes through the guest's stub, a TCP forward and a helper
	// process on the host: on a loaded host one may time out, so the
	// check is that one answers within the deadline (a broken NIC never
	// does).
	var r result
	var m []string
	if !testenv.Poll(60*time.Second, 200*time.Millisecond, func() bool {
		r = sh("nslookup ok.test")
		m = regexp.MustCompile(`Address:\s*(10\.0\.2\.\d+)`).FindStringSubmatch(r.stdout)
		return r.code == 0 && m != nil
	}) {
		t.Fatalf("DNS after the MAC change: %s", r)
	}
	if !testenv.Poll(60*time.Second, 200*time.Millisecond, func() bool {
		r = sh(fmt.Sprintf(`printf 'GET / HTTP/1.0\r\nHost: ok.test\r\n\r\n' | nc -w 10 %s %s`, m[1], wp))
		return strings.Contains(r.stdout, "host-page")
	}) {
		t.Errorf("egress after the MAC change: %s", r)
	}
}

// restoredRequest is the wire form of id, for sending what the host-side
// client would refuse.
func restoredRequest(id guestid.Identity) *pb.RestoredRequest {
	return &pb.RestoredRequest{Entropy: id.Entropy, UnixNanos: id.UnixNanos, Hostname: id.Hostname, MachineId: id.MachineID, Mac: id.MAC}
}

// TestCloneUniqueness is issue 13's clone check: two clones of one
// snapshot read different bytes from /dev/urandom (the first read in
// each, right after the restore), have their own hostnames and
// machine-ids, and both clocks are within 1 s of the host right after the
// restore. The source's clock is set back to 2001 before the snapshot, so
// a clone that kept the saved clock fails by decades, not by a margin.
func TestCloneUniqueness(t *testing.T) {
	e := newEnv(t)
	defer func() {
		e.run("down", "--all")
		e.run("snapshot", "rm", "base")
		e.assertClean()
	}()
	e.must("up", "--name", "src")
	e.must("exec", "src", "--", "date", "-s", "@1000000000")
	e.must("snapshot", "save", "src", "base")
	e.must("down", "src")

	type seen struct{ random, hostname, machineID string }
	var got []seen
	for _, name := range []string{"clone-a", "clone-b"} {
		e.must("up", "--from-snapshot", "base", "--name", name)
		// The first thing run in the clone: its first random bytes.
		r := e.must("exec", name, "--", "sh", "-c", "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; cat /etc/machine-id 2>/dev/null || echo none")
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) != 3 || len(lines[0]) != 32 {
			t.Fatalf("%s: %q", name, r.stdout)
		}
		got = append(got, seen{lines[0], lines[1], lines[2]})
		if g, b, a, ok := e.guestClock(name, time.Second); !ok {
			t.Errorf("%s: guest clock %s not within 1s of the host's [%s, %s] after the restore", name, g, b, a)
		}
	}
	a, b := got[0], got[1]
	if a.random == b.random {
		t.Errorf("both clones read %s first from /dev/urandom", a.random)
	}
	if a.hostname != "clone-a" || b.hostname != "clone-b" {
		t.Errorf("hostnames %q, %q; want the sandbox names", a.hostname, b.hostname)
	}
	if a.machineID == b.machineID || guestid.ValidMachineID(a.machineID) != nil || guestid.ValidMachineID(b.machineID) != nil {
		t.Errorf("machine-ids %q, %q: want two different valid ones", a.machineID, b.machineID)
	}
}

// TestMCPSnapshotClone: through `mvmctl mcp stdio`, with snapshots enabled
// by the operator (MVM_MCP_MAX_SNAPSHOTS=1): a model snapshots its
// sandbox, starts a copy that has the source's file and its own hostname,
// is refused a second snapshot (the count cap) and a tag it did not make;
// when the server stops, its snapshot is gone from disk.
func TestMCPSnapshotClone(t *testing.T) {
	e := newEnv(t)
	defer func() {
		e.run("down", "--all")
		e.assertClean()
	}()
	m := startMCP(t, e, "MVM_MCP_MAX_SNAPSHOTS=1", "MVM_MCP_SNAPSHOT_MIB=2048")
	src := m.ok("sandbox_create", map[string]any{"memory_mib": 256}, 3*time.Minute)["sandbox"].(string)
	m.ok("files_write", map[string]any{"sandbox": src, "path": "/root/mark", "content": "from-source"}, time.Minute)
	snap := m.ok("sandbox_snapshot", map[string]any{"sandbox": src}, 3*time.Minute)
	tag, _ := snap["snapshot"].(string)
	if !strings.HasPrefix(tag, "mcp-") || snap["bytes"].(float64) <= 0 {
		t.Fatalf("sandbox_snapshot: %v", snap)
	}
	m.fails("sandbox_snapshot", map[string]any{"sandbox": src}, "MVM_MCP_MAX_SNAPSHOTS=1")
	m.fails("sandbox_create", map[string]any{"snapshot": "not-mine"}, "not one this server may start")
	clone := m.ok("sandbox_create", map[string]any{"snapshot": tag}, 3*time.Minute)
	cl := clone["sandbox"].(string)
	if cl == src || clone["memory_mib"].(float64) != 256 || clone["network"] != "none" {
		t.Fatalf("clone: %v", clone)
	}
	r := m.ok("run_command", map[string]any{"sandbox": cl, "command": "cat /root/mark; echo; hostname"}, time.Minute)
	if r["stdout"] != "from-source\n"+cl+"\n" {
		t.Errorf("clone: %q", r["stdout"])
	}
	if out := e.must("snapshot", "ls", "--json").stdout; !strings.Contains(out, tag) {
		t.Fatalf("snapshot ls while the server runs: %s", out)
	}
	m.closeAndWait()
	if out := e.must("snapshot", "ls", "--json").stdout; strings.Contains(out, tag) {
		t.Errorf("the server's snapshot outlived it: %s", out)
	}
}

// TestResumeRefreshesClockKeepsMachine: a sandbox paused to disk and
// resumed is the same machine: its machine-id and hostname are kept, while
// its clock (set back to 2001 before the pause, as hours on disk would
// leave it) is within 1 s of the host right after the resume.
func TestResumeRefreshesClockKeepsMachine(t *testing.T) {
	e := newEnv(t)
	defer func() {
		e.run("down", "--all")
		e.assertClean()
	}()
	e.must("up", "--name", "keeper")
	const mid = "0123456789abcdef0123456789abcdef"
	e.must("exec", "keeper", "--", "sh", "-c", "echo "+mid+" > /etc/machine-id && date -s @1000000000 >/dev/null")
	e.must("pause", "keeper")
	e.must("resume", "keeper")
	if g, b, a, ok := e.guestClock("keeper", time.Second); !ok {
		t.Errorf("guest clock %s not within 1s of the host's [%s, %s] after the resume", g, b, a)
	}
	if r := e.must("exec", "keeper", "--", "sh", "-c", "hostname; cat /etc/machine-id"); r.stdout != "keeper\n"+mid+"\n" {
		t.Errorf("after the resume: %q, want the same hostname and machine-id", r.stdout)
	}
}

// hostWebServer starts a web server on the host that answers "host-page"
// (closed when the test ends), makes ok.test name 127.0.0.1 for the
// sandboxes e starts (MVM_NET_HOSTS) and returns the server's port.
func (e *env) hostWebServer() string {
	e.t.Helper()
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "host-page") }))
	e.t.Cleanup(web.Close)
	hostsFile := filepath.Join(e.t.TempDir(), "hosts")
	if err := os.WriteFile(hostsFile, []byte("127.0.0.1 ok.test\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	e.extra = append(e.extra, "MVM_NET_HOSTS="+hostsFile)
	return port(web.Listener.Addr())
}

// TestCloneWithNetwork: clones of a snapshot of a sandbox with a NIC each
// take their own MAC (not the source's, not each other's) and keep
// working egress through the allowlist the snapshot's plan carries.
func TestCloneWithNetwork(t *testing.T) {
	e := newEnv(t)
	defer func() {
		e.run("down", "--all")
		e.run("snapshot", "rm", "netbase")
		e.assertClean()
	}()
	wp := e.hostWebServer()
	e.must("up", "--name", "netsrc", "--allow", "ok.test:"+wp)
	srcMAC := strings.TrimSpace(e.must("exec", "netsrc", "--", "cat", "/sys/class/net/eth0/address").stdout)
	e.must("snapshot", "save", "netsrc", "netbase")
	e.must("down", "netsrc")

	macs := map[string]string{srcMAC: "netsrc"}
	for _, name := range []string{"netclone-a", "netclone-b"} {
		e.must("up", "--from-snapshot", "netbase", "--name", name)
		mac := strings.TrimSpace(e.must("exec", name, "--", "cat", "/sys/class/net/eth0/address").stdout)
		if other, dup := macs[mac]; dup {
			t.Errorf("%s has MAC %s, the same as %s", name, mac, other)
		}
		macs[mac] = name
		sh := func(script string) result { return e.run("exec", name, "--", "sh", "-c", script) }
		var r result
		var m []string
		if !testenv.Poll(60*time.Second, 200*time.Millisecond, func() bool {
			r = sh("nslookup ok.test")
			m = regexp.MustCompile(`Address:\s*(10\.0\.2\.\d+)`).FindStringSubmatch(r.stdout)
			return r.code == 0 && m != nil
		}) {
			t.Fatalf("%s: DNS through the allowlist: %s", name, r)
		}
		if !testenv.Poll(60*time.Second, 200*time.Millisecond, func() bool {
			r = sh(fmt.Sprintf(`printf 'GET / HTTP/1.0\r\nHost: ok.test\r\n\r\n' | nc -w 10 %s %s`, m[1], wp))
			return strings.Contains(r.stdout, "host-page")
		}) {
			t.Errorf("%s: egress through the allowlist: %s", name, r)
		}
	}
}
