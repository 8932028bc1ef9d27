package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Servers on 127.0.0.1 stand in for the internet; MVM_NET_HOSTS maps the
// test's names to them, for the host-side resolver only.

func TestNetworkNone(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.must("run", "--", "ls", "/sys/class/net")
	if strings.Fields(r.stdout)[0] != "lo" || len(strings.Fields(r.stdout)) != 1 {
		t.Errorf("interfaces of a network-less sandbox: %q", r.stdout)
	}
	// Bad combinations are refused before anything boots.
	for _, args := range [][]string{
		{"run", "--network", "none", "--allow", "example.com", "--", "true"},
		{"run", "--network", "unrestricted", "--", "true"},
		{"run", "--allow", "1.2.3.4:443", "--", "true"},
		{"run", "--network", "nosuch", "--", "true"},
		{"run", "--allow-private", "--", "true"}, // needs an allowlist
	} {
		if r := e.run(args...); r.code != 2 {
			t.Errorf("%v: %s", args, r)
		}
	}
	if r := e.run("run", "--network", "unrestricted", "--", "true"); !strings.Contains(r.stderr, "MVM_ACK_UNRESTRICTED_NETWORK") {
		t.Errorf("unrestricted without acknowledgement: %s", r)
	}
	e.assertClean()
}

type hits struct {
	mu    sync.Mutex
	hosts []string
}

func (h *hits) add(s string) { h.mu.Lock(); h.hosts = append(h.hosts, s); h.mu.Unlock() }
func (h *hits) has(s string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, x := range h.hosts {
		if x == s {
			return true
		}
	}
	return false
}

func port(addr net.Addr) string { return strconv.Itoa(addr.(*net.TCPAddr).Port) }

// clientHello is the first flight of a TLS client asking for sni.
func clientHello(t *testing.T, sni string) []byte {
	c, s := net.Pipe()
	out := make(chan []byte)
	go func() {
		b := make([]byte, 64<<10)
		s.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := s.Read(b)
		s.Close()
		out <- b[:n]
	}()
	cl := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	cl.SetDeadline(time.Now().Add(5 * time.Second))
	go cl.Handshake()
	b := <-out
	c.Close()
	if len(b) < 50 || b[0] != 0x16 {
		t.Fatalf("no ClientHello captured")
	}
	return b
}

func TestNetworkAllowlist(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const marker = "served-by-the-test-web-server"
	var webHits, tlsHits hits
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		webHits.add(r.Host)
		io.WriteString(w, marker+"\n")
	}))
	defer web.Close()
	tsrv := httptest.NewUnstartedServer(http.NotFoundHandler())
	tsrv.TLS = &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		tlsHits.add(chi.ServerName)
		return nil, nil
	}}
	tsrv.StartTLS()
	defer tsrv.Close()
	// A service on the host's loopback the guest must never reach.
	var loopHits hits
	hostSvc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { loopHits.add(r.Host) }))
	defer hostSvc.Close()

	hostsFile := filepath.Join(t.TempDir(), "hosts")
	writeHosts := func(s string) {
		if err := os.WriteFile(hostsFile, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeHosts("127.0.0.1 ok.test bad.test rebind.test\n")
	e.extra = append(e.extra, "MVM_NET_HOSTS="+hostsFile)

	wp, tp := port(web.Listener.Addr()), port(tsrv.Listener.Addr())
	pub := freePort(t)
	e.must("up", "--name", "net", "--allow", "ok.test:"+wp, "--allow", "ok.test:"+tp, "--allow", "rebind.test:"+wp,
		"-p", pub+":8000")
	defer e.run("down", "net")
	sh := func(script string) result { return e.run("exec", "net", "--", "sh", "-c", script) }

	// DNS: allowed names get a synthetic address, others fail.
	r := sh("nslookup ok.test")
	m := regexp.MustCompile(`Address:\s*(10\.0\.2\.\d+)`).FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil {
		t.Fatalf("nslookup ok.test: %s", r)
	}
	okIP := m[1]
	// Both of busybox's queries (A and AAAA) are answered: on a jiffies
	// clock they carried one ID, busybox matched the second answer to the
	// first query and waited 5 s for an answer it had dropped.
	if strings.Contains(r.stdout+r.stderr, "Can't find") {
		t.Errorf("nslookup ok.test: a query went unanswered: %s", r)
	}
	if r := sh("nslookup bad.test"); r.code == 0 || strings.Contains(r.stdout, "10.0.2.") {
		t.Errorf("nslookup of a name not allowed succeeded: %s", r)
	}
	rb := regexp.MustCompile(`Address:\s*(10\.0\.2\.\d+)`).FindStringSubmatch(sh("nslookup rebind.test").stdout)
	if rb == nil {
		t.Fatal("nslookup rebind.test failed")
	}
	get := func(ip, port, host string) result {
		return sh(fmt.Sprintf(`printf 'GET / HTTP/1.0\r\nHost: %s\r\n\r\n' | nc -w 10 %s %s`, host, ip, port))
	}

	// HTTP to the allowed name and port.
	if r := get(okIP, wp, "ok.test:"+wp); !strings.Contains(r.stdout, marker) {
		t.Errorf("allowed HTTP: %s", r)
	}
	// The same server under a name that is not allowed.
	if r := get(okIP, wp, "bad.test"); strings.Contains(r.stdout, marker) || webHits.has("bad.test") {
		t.Errorf("HTTP with Host bad.test got through: %s", r)
	}
	// TLS: the right SNI reaches the server, another does not.
	r = e.runIn(bytes.NewReader(clientHello(t, "ok.test")), "exec", "-i", "net", "--", "sh", "-c", "nc -w 10 "+okIP+" "+tp+" | head -c 5")
	if len(r.stdout) < 2 || r.stdout[0] != 0x16 || r.stdout[1] != 0x03 || !tlsHits.has("ok.test") {
		t.Errorf("allowed TLS: no ServerHello (%q), server saw %v", r.stdout, tlsHits.hosts)
	}
	r = e.runIn(bytes.NewReader(clientHello(t, "bad.test")), "exec", "-i", "net", "--", "sh", "-c", "nc -w 10 "+okIP+" "+tp+" | head -c 5")
	if len(r.stdout) > 0 || tlsHits.has("bad.test") {
		t.Errorf("TLS with SNI bad.test got through: %q", r.stdout)
	}
	// Raw IPs, the host's loopback through the gateway, metadata, and an
	// allowed name's address on a port that is not allowed: all refused,
	// even after the guest (root) adds a default route itself.
	hp := port(hostSvc.Listener.Addr())
	r = sh(fmt.Sprintf(`route add default gw 10.0.2.2 2>/dev/null
for t in "10.0.2.2 %s" "169.254.169.254 80" "1.1.1.1 443" "%s %s" "10.0.2.3 53"; do
  if echo x | nc -w 5 $t >/dev/null 2>&1; then echo "REACHED $t"; fi
done; echo done`, hp, okIP, hp))
	if strings.Contains(r.stdout, "REACHED") || !strings.Contains(r.stdout, "done") {
		t.Errorf("guest reached something outside the allowlist: %s", r)
	}
	if len(loopHits.hosts) > 0 {
		t.Errorf("host loopback service was reached: %v", loopHits.hosts)
	}

	// DNS rebinding: the name moves to the metadata address.
	if r := get(rb[1], wp, "rebind.test"); !strings.Contains(r.stdout, marker) {
		t.Fatalf("rebind.test first connection: %s", r)
	}
	writeHosts("127.0.0.1 ok.test bad.test\n169.254.169.254 rebind.test\n")
	if r := get(rb[1], wp, "rebind.test"); strings.Contains(r.stdout, marker) {
		t.Errorf("rebinding to 169.254.169.254 was followed: %s", r)
	}

	// Inbound: the published port answers on 127.0.0.1 only.
	e.must("exec", "net", "--", "sh", "-c", "mkdir -p /www && echo guest-page > /www/index.html && httpd -p 8000 -h /www")
	fetch := func(addr string) (string, error) {
		c := http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get("http://" + addr + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}
	if body, err := fetch("127.0.0.1:" + pub); err != nil || !strings.Contains(body, "guest-page") {
		t.Errorf("published port: %q %v", body, err)
	}
	if ip := nonLoopbackIP(); ip != "" {
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, pub), 2*time.Second); err == nil {
			c.Close()
			t.Errorf("published port answers on %s", ip)
		}
	}
	// forward adds a binding to the running sandbox; port lists them.
	pub2 := freePort(t)
	e.must("forward", "net", "-p", pub2+":8000")
	if body, err := fetch("127.0.0.1:" + pub2); err != nil || !strings.Contains(body, "guest-page") {
		t.Errorf("forwarded port: %q %v", body, err)
	}
	// A guest port alone: the supervisor picks a free host port.
	var bound []map[string]any
	if err := json.Unmarshal([]byte(e.must("forward", "net", "-p", "8000", "--json").stdout), &bound); err != nil || len(bound) != 1 {
		t.Fatalf("forward --json: want the one new binding: %v %v", bound, err)
	}
	auto := fmt.Sprint(bound[0]["host_port"])
	if body, err := fetch("127.0.0.1:" + auto); auto == "0" || err != nil || !strings.Contains(body, "guest-page") {
		t.Errorf("auto-picked port %s: %q %v", auto, body, err)
	}
	ports := e.must("port", "net").stdout
	if !strings.Contains(ports, "8000/tcp -> 127.0.0.1:"+pub) || !strings.Contains(ports, "127.0.0.1:"+pub2) {
		t.Errorf("port listing: %q", ports)
	}

	// Audit: allow and deny decisions with names, ports and reasons, and no
	// payload bytes.
	chain, err := os.ReadFile(filepath.Join(e.data, "audit", "chain.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var kinds = map[string]int{}
	reasons := map[string]bool{}
	for _, line := range bytes.Split(bytes.TrimSpace(chain), []byte("\n")) {
		var rec struct {
			Kind   string         `json:"kind"`
			Fields map[string]any `json:"fields"`
		}
		json.Unmarshal(line, &rec)
		if strings.HasPrefix(rec.Kind, "net.") {
			kinds[rec.Kind]++
			if r, ok := rec.Fields["reason"].(string); ok {
				reasons[r] = true
			}
		}
	}
	if kinds["net.allowed"] == 0 || kinds["net.denied"] == 0 || kinds["net.port_published"] < 2 {
		t.Errorf("network audit events: %v", kinds)
	}
	for _, want := range []string{"name_not_allowed", "name_mismatch", "rebinding"} {
		if !reasons[want] {
			t.Errorf("no net.denied with reason %s (have %v)", want, reasons)
		}
	}
	if bytes.Contains(chain, []byte(marker)) || bytes.Contains(chain, []byte("GET /")) {
		t.Error("payload bytes in the audit chain")
	}
	e.must("down", "net")
	e.assertClean()
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return port(l.Addr())
}

func nonLoopbackIP() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil && !ip.IP.IsLoopback() {
			return ip.IP.String()
		}
	}
	return ""
}

// TestManifestEgressNeedsConsent: an untrusted repository's mvm.toml asks
// for egress. `up DIR` refuses it with what to do, leaving nothing behind;
// with --allow-manifest-network the entries are printed before boot and
// work. host.mvm.internal is refused in a manifest, and a name that
// resolves to the LAN is refused by the proxy without being dialed.
func TestManifestEgressNeedsConsent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const marker = "manifest-egress-ok"
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, marker+"\n") }))
	defer web.Close()
	wp := port(web.Listener.Addr())
	hostsFile := filepath.Join(t.TempDir(), "hosts")
	// lan.test stands for a name whose DNS answers a private address; the
	// proxy must refuse it without connecting (only 127.0.0.1 is ever
	// dialed by this test).
	os.WriteFile(hostsFile, []byte("127.0.0.1 ok.test\n10.200.0.1 lan.test\n"), 0o644)
	e.extra = append(e.extra, "MVM_NET_HOSTS="+hostsFile)

	repo := t.TempDir()
	os.WriteFile(filepath.Join(repo, "mvm.toml"), []byte("template = \"minimal\"\nallow = [\"ok.test:"+wp+"\"]\n"), 0o644)

	// Without consent: refused before boot, naming the entry and the flag.
	r := e.run("up", repo, "--name", "m")
	if r.code != 126 || !strings.Contains(r.stderr, "ok.test:"+wp) || !strings.Contains(r.stderr, "--allow-manifest-network") {
		t.Fatalf("up without consent: want exit 126 naming the entry and --allow-manifest-network: %s", r)
	}
	e.assertClean()

	// With consent: shown on stderr, then applied. The operator's own
	// --allow lan.test:80 is applied too (and refused at connect time).
	r = e.must("up", repo, "--name", "m", "--allow-manifest-network", "--allow", "lan.test:"+wp, "--json")
	if !strings.Contains(r.stderr, "ok.test:"+wp) || !strings.Contains(r.stderr, "manifest") {
		t.Errorf("manifest egress not shown before boot: %s", r)
	}
	defer e.run("down", "m")
	sh := func(script string) result { return e.run("exec", "m", "--", "sh", "-c", script) }
	addr := func(name string) string {
		r := sh("nslookup " + name)
		m := regexp.MustCompile(`Address:\s*(10\.0\.2\.\d+)`).FindStringSubmatch(r.stdout)
		if m == nil {
			t.Fatalf("nslookup %s failed: %s", name, r)
		}
		return m[1]
	}
	get := func(ip, host string) result {
		return sh(fmt.Sprintf(`printf 'GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' | nc -w 10 %s %s`, host, ip, wp))
	}
	if r := get(addr("ok.test"), "ok.test"); !strings.Contains(r.stdout, marker) {
		t.Errorf("manifest-granted egress: %s", r)
	}
	if r := get(addr("lan.test"), "lan.test"); strings.Contains(r.stdout, "HTTP/") {
		t.Errorf("a name resolving to the LAN was followed: %s", r)
	}
	// A second request on a kept-alive connection naming another host is
	// not forwarded (the first is).
	r = sh(fmt.Sprintf(`printf 'GET / HTTP/1.1\r\nHost: ok.test\r\n\r\nGET / HTTP/1.1\r\nHost: lan.test\r\n\r\n' | nc -w 10 %s %s`, addr("ok.test"), wp))
	if strings.Count(r.stdout, marker) != 1 {
		t.Errorf("keep-alive: want exactly the first request answered: %s", r)
	}
	e.must("down", "m")

	chain, err := os.ReadFile(filepath.Join(e.data, "audit", "chain.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]bool{}
	for _, line := range bytes.Split(bytes.TrimSpace(chain), []byte("\n")) {
		var rec struct {
			Kind   string         `json:"kind"`
			Fields map[string]any `json:"fields"`
		}
		json.Unmarshal(line, &rec)
		if rec.Kind == "net.denied" {
			reasons[fmt.Sprint(rec.Fields["reason"])] = true
		}
	}
	if !reasons["blocked_address"] || !reasons["name_mismatch"] {
		t.Errorf("want net.denied blocked_address and name_mismatch, have %v", reasons)
	}

	// host.mvm.internal in a manifest: refused whatever the flags.
	os.WriteFile(filepath.Join(repo, "mvm.toml"), []byte("template = \"minimal\"\nallow = [\"host.mvm.internal:22\"]\n"), 0o644)
	if r := e.run("up", repo, "--name", "h", "--allow-manifest-network"); r.code == 0 || !strings.Contains(r.stderr, "host.mvm.internal") {
		t.Errorf("host.mvm.internal from a manifest: %s", r)
	}
	e.assertClean()
}
