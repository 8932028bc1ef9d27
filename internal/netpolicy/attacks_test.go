package netpolicy

// Regression tests for the egress findings of issue 11 (items 2, 4, 5, 9).
// Each demonstrates the attack; docs/security.md lists them.

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/netpolicy/handoff"
	"github.com/mvm-sandbox/mvm/internal/testenv"
	"golang.org/x/net/dns/dnsmessage"
)

// privateAnswers are LAN-side answers a hostile name can give.
var privateAnswers = []string{
	"10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1", "100.64.0.1", "100.127.255.254",
	"fd00::1", "fc00::1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:c0a8:0101::1",
	"168.63.129.16",
}

func TestPrivateAnswersRefused(t *testing.T) {
	dns := &fakeDNS{m: map[string][]netip.Addr{}}
	r := &Resolver{Lookup: dns.lookup, HostAddrs: []netip.Addr{}}
	ctx := context.Background()
	for i, a := range privateAnswers {
		name := "lan" + strconv.Itoa(i) + ".example"
		dns.set(name, a)
		if got, reason := r.Resolve(ctx, name); reason != ReasonBlockedAddress {
			t.Errorf("first answer %s: got %v %q, want %s", a, got, reason, ReasonBlockedAddress)
		}
	}
	// Beside a public address, the private one is dropped, never dialed.
	dns.set("mixed.example", "192.168.0.10", "93.184.216.34")
	if got, reason := r.Resolve(ctx, "mixed.example"); reason != "" || len(got) != 1 || got[0].String() != "93.184.216.34" {
		t.Errorf("mixed answer: %v %q", got, reason)
	}
	// The MVM_NET_HOSTS hook stands in for the internet with loopback
	// servers only: a file mapping a name to the LAN is judged like DNS.
	hosts := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hosts, []byte("10.9.9.9 lan.test\n169.254.169.254 meta.test\n127.0.0.1 ok.test\n"), 0o644)
	hr := &Resolver{HostsFile: hosts, Lookup: dns.lookup, HostAddrs: []netip.Addr{}}
	for _, n := range []string{"lan.test", "meta.test"} {
		if got, reason := hr.Resolve(ctx, n); reason != ReasonBlockedAddress {
			t.Errorf("hosts file %s: %v %q", n, got, reason)
		}
	}
	if _, reason := hr.Resolve(ctx, "ok.test"); reason != "" {
		t.Errorf("hosts file loopback test server: %q", reason)
	}

	// Through the proxy: a guest connection to an allowed name that
	// resolves to the LAN is refused and nothing is dialed.
	cfg, _, err := Build(Request{Allow: []string{"intranet.example:80"}}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	dns.set("intranet.example", "192.168.7.7")
	log := &auditLog{}
	dialed := make(chan string, 1)
	p := NewProxy(cfg, Options{Audit: log.add, Resolver: r, Dial: func(_ context.Context, _, addr string) (net.Conn, error) {
		dialed <- addr
		return nil, io.EOF
	}})
	log.p = p
	c := dialVia(p, "10.0.2.101:80")
	c.Write([]byte("GET / HTTP/1.1\r\nHost: intranet.example\r\n\r\n"))
	io.ReadAll(c)
	if ev := log.last(); ev["reason"] != ReasonBlockedAddress {
		t.Errorf("proxy: %v", ev)
	}
	select {
	case a := <-dialed:
		t.Errorf("dialed %s", a)
	default:
	}
}

func TestRebindingToPrivateRefused(t *testing.T) {
	ctx := context.Background()
	for i, bad := range privateAnswers {
		dns := &fakeDNS{m: map[string][]netip.Addr{}}
		r := &Resolver{Lookup: dns.lookup, HostAddrs: []netip.Addr{}}
		name := "rebind" + strconv.Itoa(i) + ".example"
		dns.set(name, "93.184.216.34") // public first answer: pinned
		if _, reason := r.Resolve(ctx, name); reason != "" {
			t.Fatalf("first answer: %q", reason)
		}
		dns.set(name, bad)
		if got, reason := r.Resolve(ctx, name); reason != ReasonRebinding {
			t.Errorf("rebinding to %s: got %v %q, want %s", bad, got, reason, ReasonRebinding)
		}
		dns.set(name, "93.184.216.34", bad) // hidden beside the pinned one
		if got, reason := r.Resolve(ctx, name); reason != ReasonRebinding {
			t.Errorf("rebinding to %s beside the pinned address: got %v %q", bad, got, reason)
		}
	}
}

// recordingServer is an HTTP server on 127.0.0.1 that records the Host
// of every request it serves.
func recordingServer(t *testing.T) (*httptest.Server, func() []string) {
	var mu sync.Mutex
	var hosts []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		hosts = append(hosts, r.Host)
		mu.Unlock()
		io.WriteString(w, "served "+r.Host+" body="+strconv.Itoa(len(body))+"\n")
	}))
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), hosts...)
	}
}

// proxyTo returns a proxy allowing ok.test on srv's port (ok.test and
// bad.test both map to 127.0.0.1, where srv listens).
func proxyTo(t *testing.T, srv *httptest.Server) (*Proxy, *auditLog, string) {
	path := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(path, []byte("127.0.0.1 ok.test bad.test\n"), 0o644)
	cfg, _, err := Build(Request{Allow: []string{"ok.test:" + portOf(srv)}}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	log := &auditLog{}
	p := NewProxy(cfg, Options{Audit: log.add, Resolver: &Resolver{HostsFile: path, Lookup: (&fakeDNS{m: map[string][]netip.Addr{}}).lookup}})
	log.p = p
	return p, log, "10.0.2.101:" + portOf(srv)
}

// exchange writes reqs on one guest connection through p and returns
// everything the guest reads back.
func exchange(t *testing.T, p *Proxy, target, reqs string) string {
	c := dialVia(p, target)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		io.WriteString(c, reqs)
	}()
	b, _ := io.ReadAll(c)
	c.Close()
	return string(b)
}

func TestSecondRequestOnKeepAliveChecked(t *testing.T) {
	srv, seen := recordingServer(t)
	p, log, target := proxyTo(t, srv)
	out := exchange(t, p, target,
		"GET /1 HTTP/1.1\r\nHost: ok.test\r\n\r\n"+
			"GET /2 HTTP/1.1\r\nHost: bad.test\r\n\r\n")
	if strings.Contains(out, "served bad.test") {
		t.Errorf("the second request reached bad.test: %q", out)
	}
	for _, h := range seen() {
		if h != "ok.test" {
			t.Errorf("upstream served Host %q", h)
		}
	}
	if ev := log.last(); ev["kind"] != KindDenied || ev["reason"] != ReasonNameMismatch || ev["requested"] != "bad.test" {
		t.Errorf("audit %v", ev)
	}

	// Bodies are framed: a body that looks like a request is a body, and
	// a well-framed second request to the allowed name goes through.
	srv2, seen2 := recordingServer(t)
	p2, log2, target2 := proxyTo(t, srv2)
	fake := "GET / HTTP/1.1\r\nHost: bad.test\r\n\r\n"
	chunk := strconv.FormatInt(int64(len(fake)), 16)
	out = exchange(t, p2, target2,
		"POST /a HTTP/1.1\r\nHost: ok.test\r\nContent-Length: "+strconv.Itoa(len(fake))+"\r\n\r\n"+fake+
			"POST /b HTTP/1.1\r\nHost: ok.test\r\nTransfer-Encoding: chunked\r\n\r\n"+chunk+";x=y\r\n"+fake+"\r\n0\r\nX-T: 1\r\n\r\n"+
			"GET /c HTTP/1.1\r\nHost: ok.test\r\nConnection: close\r\n\r\n")
	if n := strings.Count(out, "served ok.test body="); n != 3 || strings.Count(out, "body="+strconv.Itoa(len(fake))) != 2 {
		t.Errorf("framed requests: %d answers: %q", n, out)
	}
	if h := seen2(); len(h) != 3 {
		t.Errorf("upstream saw %v", h)
	}
	if ev := log2.last(); ev["kind"] != KindAllowed {
		t.Errorf("audit %v", ev)
	}

	// Ambiguous framing (request smuggling) ends the connection.
	for _, smuggle := range []string{
		"POST / HTTP/1.1\r\nHost: ok.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: ok.test\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: ok.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: ok.test\r\n\r\nGET / HTTP/1.1\r\nHost: ok.test\r\nContent-Length: +3\r\n\r\nabc",
	} {
		srv3, seen3 := recordingServer(t)
		p3, log3, target3 := proxyTo(t, srv3)
		exchange(t, p3, target3, smuggle+"GET /x HTTP/1.1\r\nHost: bad.test\r\n\r\n")
		for _, h := range seen3() {
			if h != "ok.test" {
				t.Errorf("%q: upstream served %q", smuggle, h)
			}
		}
		if ev := log3.last(); ev["kind"] != KindDenied || ev["reason"] != ReasonMalformed {
			t.Errorf("%q: audit %v", smuggle, ev)
		}
	}
}

func TestUpgradeRefused(t *testing.T) {
	for _, c := range []struct {
		name, reqs string
		served     int // requests before the upgrade
	}{
		{"websocket", "GET /ws HTTP/1.1\r\nHost: ok.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 0},
		{"h2c", "GET / HTTP/1.1\r\nHost: ok.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", 0},
		{"second request", "GET / HTTP/1.1\r\nHost: ok.test\r\n\r\nGET /ws HTTP/1.1\r\nHost: ok.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 1},
		{"h2 prior knowledge", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0},
	} {
		srv, seen := recordingServer(t)
		p, log, target := proxyTo(t, srv)
		out := exchange(t, p, target, c.reqs)
		if strings.Contains(out, " 101 ") || strings.Count(out, "served") != c.served || len(seen()) != c.served {
			t.Errorf("%s: upstream saw %v, guest read %q", c.name, seen(), out)
		}
		want := ReasonUpgrade
		if c.name == "h2 prior knowledge" {
			want = ReasonUnknownProto
		}
		if ev := log.last(); ev["kind"] != KindDenied || ev["reason"] != want {
			t.Errorf("%s: audit %v", c.name, ev)
		}
	}
}

func TestEgressHelperBounded(t *testing.T) {
	// DNS connections, each one a helper process QEMU started, are
	// bounded like the others: beyond the limit a new one is refused and
	// closed at once (it used to skip the semaphore and stay open).
	p, log, _, _ := proxyFixture(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "e.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go p.Serve(l)
	var held []*os.File
	defer func() {
		for _, f := range held {
			f.Close()
		}
	}()
	const limit = 16 // the default bound of concurrent DNS connections
	for i := 0; i <= limit; i++ {
		pair, err := socketpair()
		if err != nil {
			t.Fatal(err)
		}
		if err := handoff.Send(sock, "dns", int(pair[1].Fd())); err != nil {
			t.Fatal(err)
		}
		pair[1].Close()
		held = append(held, pair[0])
		if i < limit {
			// Handoffs are served concurrently: let this one take its slot
			// before the next arrives, so that the one refused is the last.
			testenv.Eventually(t, 10*time.Second, time.Millisecond, func() bool { return len(p.dnsSem) == i+1 }, testenv.Msg("DNS connection to take its slot"))
		}
	}
	// The last one is closed by the proxy without an answer.
	last := held[limit]
	last.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := bufio.NewReader(last).Read(make([]byte, 1))
	if n != 0 || err != io.EOF {
		t.Errorf("DNS connection beyond the limit: read %d, %v; want EOF", n, err)
	}
	if ev := log.last(); ev["kind"] != KindDenied || ev["reason"] != ReasonTooMany || ev["proto"] != ProtoDNS {
		t.Errorf("audit %v", ev)
	}
	// The first ones still work: a query is answered.
	q := dnsQuery(t, "ok.test.")
	first := held[0]
	first.SetDeadline(time.Now().Add(5 * time.Second))
	first.Write(append([]byte{byte(len(q) >> 8), byte(len(q))}, q...))
	var l2 [2]byte
	if _, err := io.ReadFull(first, l2[:]); err != nil {
		t.Errorf("held DNS connection: %v", err)
	}
}

func dnsQuery(t *testing.T, name string) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 9, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// FuzzHTTPFraming: whatever the guest sends, what the proxy forwards,
// read by Go's own HTTP server parser request after request, never names
// another host or asks for an upgrade.
func FuzzHTTPFraming(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: ok.test\r\n\r\nGET / HTTP/1.1\r\nHost: bad.test\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: ok.test\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: ok.test\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: ok.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: ok.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
	f.Add([]byte("\r\nGET / HTTP/1.0\r\nHost: ok.test:80\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var out strings.Builder
		copyRequests(&out, bufio.NewReader(strings.NewReader(string(in))), "ok.test", 80)
		r := bufio.NewReader(strings.NewReader(out.String()))
		for {
			req, err := http.ReadRequest(r)
			if err != nil {
				return
			}
			h, p := req.Host, ""
			if i := strings.LastIndexByte(h, ':'); i >= 0 {
				h, p = h[:i], h[i+1:]
			}
			if n, err := CanonicalName(h); err != nil || n != "ok.test" || (p != "" && p != "80") {
				t.Fatalf("forwarded a request for %q from %q", req.Host, in)
			}
			if req.Header.Get("Upgrade") != "" {
				t.Fatalf("forwarded an upgrade from %q", in)
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
		}
	})
}
