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
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "host-page") }))
	defer web.Close()
	hostsFile := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hostsFile, []byte("127.0.0.1 ok.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.extra = append(e.extra, "MVM_NET_HOSTS="+hostsFile)
	wp := port(web.Listener.Addr())
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
	if body, err := fetch(); err != nil || !strings.Contains(body, "guest-page") {
		t.Errorf("published port after the MAC change: %q %v", body, err)
	}
	// (busybox's static wget cannot resolve names: nslookup, then nc.)
	r := sh("nslookup ok.test")
	m := regexp.MustCompile(`Address:\s*(10\.0\.2\.\d+)`).FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil {
		t.Fatalf("DNS after the MAC change: %s", r)
	}
	if r := sh(fmt.Sprintf(`printf 'GET / HTTP/1.0\r\nHost: ok.test\r\n\r\n' | nc -w 10 %s %s`, m[1], wp)); !strings.Contains(r.stdout, "host-page") {
		t.Errorf("egress after the MAC change: %s", r)
	}
}

// restoredRequest is the wire form of id, for sending what the host-side
// client would refuse.
func restoredRequest(id guestid.Identity) *pb.RestoredRequest {
	return &pb.RestoredRequest{Entropy: id.Entropy, UnixNanos: id.UnixNanos, Hostname: id.Hostname, MachineId: id.MachineID, Mac: id.MAC}
}
