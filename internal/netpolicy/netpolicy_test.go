package netpolicy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
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

	"github.com/mvm-sandbox/mvm/internal/guestnet"
	"github.com/mvm-sandbox/mvm/internal/netpolicy/handoff"
	"github.com/mvm-sandbox/mvm/internal/testenv"
	"golang.org/x/net/dns/dnsmessage"
)

// fakeClock is an injected clock for rate limits.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestParseAllow(t *testing.T) {
	good := map[string]Rule{
		"example.com":          {Host: "example.com", Port: 443},
		"Example.COM.:8443":    {Host: "example.com", Port: 8443},
		"a-b.c.example.org:80": {Host: "a-b.c.example.org", Port: 80},
		HostAlias + ":8080":    {Host: HostAlias, Port: 8080},
	}
	for in, want := range good {
		got, err := ParseAllow(in)
		if err != nil || got != want {
			t.Errorf("ParseAllow(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", ":443", "example.com:0", "example.com:65536", "example.com:x",
		"1.2.3.4", "1.2.3.4:443", "[::1]:443", "::1", "*.example.com", "exa mple.com", "-a.com", "a..com",
		"example.com:443:1", strings.Repeat("a", 64) + ".com", "host.123"} {
		if r, err := ParseAllow(in); err == nil {
			t.Errorf("ParseAllow(%q) = %v, want an error", in, r)
		}
	}
}

func TestParsePublish(t *testing.T) {
	good := map[string]Publish{
		"8080:80":             {"127.0.0.1", 8080, 80},
		"0.0.0.0:8080:80":     {"0.0.0.0", 8080, 80},
		"127.0.0.1:9000:9000": {"127.0.0.1", 9000, 9000},
		"8080:80/tcp":         {"127.0.0.1", 8080, 80},
	}
	for in, want := range good {
		got, err := ParsePublish(in)
		if err != nil || got != want {
			t.Errorf("ParsePublish(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"80", "a:80", "0:80", "8080:0", "1.2.3:8080:80", "[::1]:8080:80", "localhost:8080:80", "1:2:3:4"} {
		if p, err := ParsePublish(in); err == nil {
			t.Errorf("ParsePublish(%q) = %v, want an error", in, p)
		}
	}
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestBuild(t *testing.T) {
	none := env(nil)
	cfg, _, err := Build(Request{}, none)
	if err != nil || cfg.Mode != None || cfg.HasNIC() || cfg.KernelArg() != "" {
		t.Fatalf("default: %+v %v", cfg, err)
	}
	if _, _, err := Build(Request{Network: "none", Allow: []string{"a.com"}}, none); err == nil {
		t.Error("none + --allow accepted")
	}
	cfg, _, err = Build(Request{Allow: []string{"b.com:80", "a.com", "a.com:443"}}, none)
	if err != nil || cfg.Mode != Allowlist || len(cfg.Allow) != 2 || cfg.Allow[0] != (Rule{Host: "a.com", Port: 443}) {
		t.Fatalf("allow: %+v %v", cfg, err)
	}
	if got := cfg.GuestAddrs(); got["a.com"] != netip.MustParseAddr("10.0.2.101") || got["b.com"] != netip.MustParseAddr("10.0.2.102") {
		t.Errorf("guest addrs %v", got)
	}
	cfg, _, err = Build(Request{Network: "registries", Allow: []string{"extra.example"}}, none)
	if err != nil || cfg.Mode != Allowlist || len(cfg.Allow) != len(Presets["registries"])+1 {
		t.Fatalf("preset: %+v %v", cfg, err)
	}
	if _, _, err := Build(Request{Network: "nosuch"}, none); err == nil {
		t.Error("unknown preset accepted")
	}
	if _, _, err := Build(Request{Network: "unrestricted"}, none); err == nil || !strings.Contains(err.Error(), AckUnrestrictedEnv) {
		t.Errorf("unrestricted without ack: %v", err)
	}
	cfg, warn, err := Build(Request{Network: "unrestricted"}, env(map[string]string{AckUnrestrictedEnv: "1"}))
	if err != nil || cfg.Mode != Unrestricted || warn == "" || cfg.KernelArg() != "mvm.net=unrestricted" {
		t.Errorf("unrestricted with ack: %+v %q %v", cfg, warn, err)
	}
	cfg, _, err = Build(Request{Publish: []string{"8080:80"}}, none)
	if err != nil || !cfg.HasNIC() || cfg.KernelArg() != "mvm.net=inbound" {
		t.Errorf("publish only: %+v %v", cfg, err)
	}
	if _, _, err := Build(Request{Publish: []string{"8080:80", "8080:81"}}, none); err == nil {
		t.Error("duplicate host port accepted")
	}
	var many []string
	for i := 0; i < MaxRules+1; i++ {
		many = append(many, "h"+strconv.Itoa(i)+".example")
	}
	if _, _, err := Build(Request{Allow: many}, none); err == nil {
		t.Error("too many rules accepted")
	}
	for name, entries := range Presets {
		for _, e := range entries {
			if _, err := ParseAllow(e); err != nil {
				t.Errorf("preset %s: %v", name, err)
			}
		}
	}
}

func TestVMNetwork(t *testing.T) {
	cfg, _, _ := Build(Request{Allow: []string{"a.com", "a.com:80"}, Publish: []string{"9000:90"}}, env(nil))
	n, err := cfg.VMNetwork("/opt/mvm,x/mvmctl")
	if err != nil {
		t.Fatal(err)
	}
	if !n.Restrict || len(n.GuestFwds) != 3 || len(n.HostFwds) != 1 {
		t.Fatalf("%+v", n)
	}
	if g := n.GuestFwds[0]; g.Addr != guestnet.DNSForward || g.Port != 53 || !strings.HasSuffix(g.Cmd, " __egress egress.sock dns") {
		t.Errorf("dns forward %+v", g)
	}
	if g := n.GuestFwds[2]; g.Addr != "10.0.2.101" || g.Port != 443 || !strings.HasSuffix(g.Cmd, "egress.sock 10.0.2.101:443") {
		t.Errorf("forward %+v", g)
	}
	if _, err := cfg.VMNetwork("/tmp/it's"); err == nil {
		t.Error("quote in exe accepted")
	}
}

// clientHello captures the first flight of a Go TLS client for sni.
func clientHello(t testing.TB, sni string) []byte {
	c, s := net.Pipe()
	var buf bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 64<<10)
		s.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _ := s.Read(b)
		buf.Write(b[:n])
		s.Close()
	}()
	cl := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: sni == ""})
	cl.SetDeadline(time.Now().Add(2 * time.Second))
	cl.Handshake()
	<-done
	c.Close()
	return buf.Bytes()
}

func TestParseSNI(t *testing.T) {
	h := clientHello(t, "API.Example.com")
	got, err := ParseSNI(h)
	if err != nil || got != "api.example.com" {
		t.Fatalf("ParseSNI = %q, %v", got, err)
	}
	for i := 0; i < len(h); i++ {
		if _, err := ParseSNI(h[:i]); err != errIncomplete {
			t.Fatalf("prefix %d: %v, want incomplete", i, err)
		}
	}
	if _, err := ParseSNI(clientHello(t, "")); err != ErrNoSNI {
		t.Errorf("no SNI: %v", err)
	}
	// The same hello split over two records.
	body := h[5:]
	split := append([]byte{0x16, 0x03, 0x01, 0, 10}, body[:10]...)
	n := len(body) - 10
	split = append(split, 0x16, 0x03, 0x01, byte(n>>8), byte(n))
	split = append(split, body[10:]...)
	if got, err := ParseSNI(split); err != nil || got != "api.example.com" {
		t.Errorf("split records: %q %v", got, err)
	}
	// Corrupt lengths never panic and never yield a name.
	for i := 5; i < len(h); i++ {
		c := append([]byte(nil), h...)
		c[i] ^= 0xff
		ParseSNI(c)
	}
	if _, err := ParseSNI([]byte{0x16, 0x03, 0x01, 0xff, 0xff}); err != ErrMalformed {
		t.Errorf("oversized record: %v", err)
	}
}

func TestParseHTTPHost(t *testing.T) {
	cases := []struct {
		req  string
		host string
		port int
		err  error
	}{
		{"GET / HTTP/1.1\r\nHost: Ok.Test:8080\r\nUser-Agent: x\r\n\r\n", "ok.test", 8080, nil},
		{"POST /x HTTP/1.0\r\nhost: ok.test\r\n\r\nbody", "ok.test", 0, nil},
		{"GET http://ok.test/x HTTP/1.1\r\nHost: ok.test\r\n\r\n", "ok.test", 0, nil},
		{"GET http://evil.test/x HTTP/1.1\r\nHost: ok.test\r\n\r\n", "", 0, ErrMalformed},
		{"GET / HTTP/1.1\r\nHost: ok.test\r\nHost: evil.test\r\n\r\n", "", 0, ErrNoHost},
		{"GET / HTTP/1.1\r\n\r\n", "", 0, ErrNoHost},
		{"CONNECT evil.test:443 HTTP/1.1\r\nHost: ok.test\r\n\r\n", "", 0, ErrMalformed},
		{"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "", 0, ErrMalformed},
		{"GET / HTTP/1.1\r\nX: y\r\n folded\r\nHost: ok.test\r\n\r\n", "", 0, ErrMalformed},
		{"GET / HTTP/1.1\r\nHost: ok.test", "", 0, errIncomplete},
		{"SSH-2.0-OpenSSH\r\n", "", 0, ErrNotTLSOrHTTP},
	}
	for _, c := range cases {
		h, p, err := ParseHTTPHost([]byte(c.req))
		if h != c.host || p != c.port || err != c.err {
			t.Errorf("%q: got %q %d %v, want %q %d %v", c.req, h, p, err, c.host, c.port, c.err)
		}
	}
	big := "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", MaxPeek) + "\r\n\r\n"
	if _, _, err := ParseHTTPHost([]byte(big)[:MaxPeek]); err != ErrHeaderTooLarge {
		t.Errorf("huge header: %v", err)
	}
	if _, _, _, err := Inspect([]byte{0}); err != ErrNotTLSOrHTTP {
		t.Errorf("binary: %v", err)
	}
}

func FuzzInspect(f *testing.F) {
	f.Add(clientHello(f, "a.example"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, host, _, err := Inspect(b)
		if err == nil {
			if _, err := CanonicalName(host); err != nil {
				t.Fatalf("accepted invalid name %q", host)
			}
		}
	})
}

// fakeDNS answers from a map that tests change.
type fakeDNS struct {
	mu sync.Mutex
	m  map[string][]netip.Addr
}

func (f *fakeDNS) set(name string, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	f.m[name] = as
}

func (f *fakeDNS) lookup(_ context.Context, name string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if a, ok := f.m[name]; ok {
		return append([]netip.Addr(nil), a...), nil
	}
	return nil, errors.New("no such host")
}

func TestResolverRebinding(t *testing.T) {
	dns := &fakeDNS{m: map[string][]netip.Addr{}}
	r := &Resolver{Lookup: dns.lookup, HostAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.7")}}
	ctx := context.Background()

	dns.set("a.example", "93.184.216.34")
	if a, reason := r.Resolve(ctx, "a.example"); reason != "" || len(a) != 1 {
		t.Fatalf("first: %v %q", a, reason)
	}
	dns.set("a.example", "93.184.216.35") // CDN rotation: public, fine
	if _, reason := r.Resolve(ctx, "a.example"); reason != "" {
		t.Fatalf("rotation: %q", reason)
	}
	for _, bad := range []string{"127.0.0.1", "169.254.169.254", "192.0.2.7", "::1", "0.0.0.0", "fe80::1", "::ffff:127.0.0.1", "100.100.100.200"} {
		dns.set("a.example", bad)
		if _, reason := r.Resolve(ctx, "a.example"); reason != ReasonRebinding {
			t.Errorf("rebinding to %s: %q", bad, reason)
		}
	}
	dns.set("a.example", "93.184.216.34") // back to the pinned answer
	if _, reason := r.Resolve(ctx, "a.example"); reason != "" {
		t.Errorf("pinned again: %q", reason)
	}
	dns.set("meta.example", "169.254.169.254")
	if _, reason := r.Resolve(ctx, "meta.example"); reason != ReasonBlockedAddress {
		t.Errorf("metadata first answer: %q", reason)
	}
	dns.set("mixed.example", "127.0.0.1", "93.184.216.1")
	if a, reason := r.Resolve(ctx, "mixed.example"); reason != "" || len(a) != 1 || a[0].String() != "93.184.216.1" {
		t.Errorf("mixed answer: %v %q", a, reason)
	}
	if _, reason := r.Resolve(ctx, "nxdomain.example"); reason != ReasonResolveFailed {
		t.Errorf("nxdomain: %q", reason)
	}
	if a, reason := r.Resolve(ctx, HostAlias); reason != "" || a[0].String() != "127.0.0.1" {
		t.Errorf("host alias: %v %q", a, reason)
	}
}

func TestResolverHostsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(path, []byte("# test\n127.0.0.1 local.test other.test\n"), 0o644)
	r := &Resolver{HostsFile: path, Lookup: (&fakeDNS{m: map[string][]netip.Addr{}}).lookup}
	ctx := context.Background()
	if a, reason := r.Resolve(ctx, "local.test"); reason != "" || a[0].String() != "127.0.0.1" {
		t.Fatalf("hosts file first answer: %v %q", a, reason)
	}
	os.WriteFile(path, []byte("169.254.169.254 local.test\n"), 0o644)
	if _, reason := r.Resolve(ctx, "local.test"); reason != ReasonRebinding {
		t.Errorf("hosts file rebinding: %q", reason)
	}
}

type auditLog struct {
	mu  sync.Mutex
	evs []map[string]any
	p   *Proxy
}

// flush waits until the proxy's queued audit events are written.
func flush(p *Proxy) {
	d := make(chan struct{})
	p.auditQ <- auditEvent{done: d}
	<-d
}

func (a *auditLog) add(kind string, f map[string]any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f["kind"] = kind
	a.evs = append(a.evs, f)
}

func (a *auditLog) last() map[string]any {
	if a.p != nil {
		flush(a.p)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.evs) == 0 {
		return nil
	}
	return a.evs[len(a.evs)-1]
}

// proxyFixture runs an upstream HTTP and TLS server on loopback, mapped
// to ok.test by a hosts file.
func proxyFixture(t *testing.T, allow ...string) (*Proxy, *auditLog, *httptest.Server, *httptest.Server) {
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello "+r.Host) }))
	t.Cleanup(web.Close)
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "tls "+r.TLS.ServerName) }))
	t.Cleanup(tlsSrv.Close)
	path := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(path, []byte("127.0.0.1 ok.test bad.test\n"), 0o644)
	var rules []string
	for _, s := range []*httptest.Server{web, tlsSrv} {
		rules = append(rules, "ok.test:"+strconv.Itoa(s.Listener.Addr().(*net.TCPAddr).Port))
	}
	cfg, _, err := Build(Request{Allow: append(rules, allow...)}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	log := &auditLog{}
	p := NewProxy(cfg, Options{Audit: log.add, Resolver: &Resolver{HostsFile: path, Lookup: (&fakeDNS{m: map[string][]netip.Addr{}}).lookup}, PeekTimeout: 500 * time.Millisecond})
	log.p = p
	return p, log, web, tlsSrv
}

func portOf(s *httptest.Server) string { return strconv.Itoa(s.Listener.Addr().(*net.TCPAddr).Port) }

// dialVia returns a client conn whose other end the proxy handles as a
// guest connection to target.
func dialVia(p *Proxy, target string) net.Conn {
	c, g := net.Pipe()
	go p.Handle(g, target)
	return c
}

func TestProxyHTTP(t *testing.T) {
	p, log, web, _ := proxyFixture(t)
	target := "10.0.2.101:" + portOf(web)
	cl := &http.Client{Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return dialVia(p, target), nil }}}
	resp, err := cl.Get("http://ok.test:" + portOf(web) + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(b), "hello ok.test") {
		t.Errorf("body %q", b)
	}
	if ev := log.last(); ev["kind"] != KindAllowed || ev["name"] != "ok.test" || ev["proto"] != ProtoHTTP {
		t.Errorf("audit %v", ev)
	}
	// The same server under a name that is not allowed.
	cl.CloseIdleConnections()
	if _, err := cl.Get("http://bad.test:" + portOf(web) + "/"); err == nil {
		t.Error("bad.test reached through ok.test's address")
	}
	if ev := log.last(); ev["kind"] != KindDenied || ev["reason"] != ReasonNameMismatch || ev["requested"] != "bad.test" {
		t.Errorf("audit %v", ev)
	}
}

func TestProxyTLS(t *testing.T) {
	p, log, _, srv := proxyFixture(t)
	target := "10.0.2.101:" + portOf(srv)
	for _, c := range []struct {
		sni  string
		ok   bool
		want string
	}{{"ok.test", true, ""}, {"bad.test", false, ReasonNameMismatch}, {"", false, ReasonNoName}} {
		conn := tls.Client(dialVia(p, target), &tls.Config{ServerName: c.sni, InsecureSkipVerify: true})
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		err := conn.Handshake()
		conn.Close()
		if (err == nil) != c.ok {
			t.Errorf("sni %q: handshake err %v", c.sni, err)
		}
		ev := log.last()
		if c.ok && ev["kind"] != KindAllowed || !c.ok && ev["reason"] != c.want {
			t.Errorf("sni %q: audit %v", c.sni, ev)
		}
	}
}

func TestProxyRefusals(t *testing.T) {
	p, log, web, _ := proxyFixture(t)
	// A forward that is not in the policy.
	c := dialVia(p, "10.0.2.101:1")
	io.ReadAll(c)
	if ev := log.last(); ev["reason"] != ReasonNotAllowed {
		t.Errorf("unknown forward: %v", ev)
	}
	// Not TLS or HTTP.
	c = dialVia(p, "10.0.2.101:"+portOf(web))
	c.Write([]byte("SSH-2.0-x\r\n"))
	io.ReadAll(c)
	if ev := log.last(); ev["reason"] != ReasonUnknownProto {
		t.Errorf("ssh: %v", ev)
	}
	// Silence until the peek deadline.
	c = dialVia(p, "10.0.2.101:"+portOf(web))
	io.ReadAll(c)
	if ev := log.last(); ev["reason"] != ReasonPeekTimeout {
		t.Errorf("silent: %v", ev)
	}
	// An endless header.
	c = dialVia(p, "10.0.2.101:"+portOf(web))
	go func() {
		c.Write([]byte("GET / HTTP/1.1\r\n"))
		for i := 0; i < MaxPeek/100+2; i++ {
			if _, err := c.Write([]byte("X: " + strings.Repeat("a", 95) + "\r\n")); err != nil {
				return
			}
		}
	}()
	io.ReadAll(c)
	if ev := log.last(); ev["reason"] != ReasonTooLarge {
		t.Errorf("huge: %v", ev)
	}
}

func TestProxyConnLimit(t *testing.T) {
	p, log, web, _ := proxyFixture(t)
	p.sem = make(chan struct{}, 1)
	target := "10.0.2.101:" + portOf(web)
	held := dialVia(p, target) // holds the one slot while silent
	testenv.Eventually(t, 10*time.Second, time.Millisecond, func() bool { return p.Conns.Load() == 1 }, testenv.Msg("the first connection to take the slot"))
	c := dialVia(p, target)
	io.ReadAll(c)
	if ev := log.last(); ev["reason"] != ReasonTooMany {
		t.Errorf("limit: %v", ev)
	}
	held.Close()
}

func TestAnswerDNS(t *testing.T) {
	p, log, _, _ := proxyFixture(t)
	ask := func(name string, typ dnsmessage.Type) dnsmessage.Message {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
		b.StartQuestions()
		b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET})
		q, _ := b.Finish()
		var m dnsmessage.Message
		if err := m.Unpack(p.AnswerDNS(q)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return m
	}
	m := ask("OK.test.", dnsmessage.TypeA)
	if m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 || m.ID != 7 ||
		m.Answers[0].Body.(*dnsmessage.AResource).A != [4]byte{10, 0, 2, 101} {
		t.Errorf("A ok.test: %+v", m)
	}
	if m := ask("ok.test.", dnsmessage.TypeAAAA); m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 0 {
		t.Errorf("AAAA ok.test: %+v", m)
	}
	if m := ask("bad.test.", dnsmessage.TypeA); m.RCode != dnsmessage.RCodeNameError || len(m.Answers) != 0 {
		t.Errorf("bad.test: %+v", m)
	}
	if ev := log.last(); ev["kind"] != KindDenied || ev["name"] != "bad.test" || ev["proto"] != ProtoDNS {
		t.Errorf("audit %v", ev)
	}
	if p.AnswerDNS([]byte{1, 2, 3}) != nil {
		t.Error("garbage answered")
	}
}

func TestAuditRateLimit(t *testing.T) {
	log := &auditLog{}
	p := NewProxy(Config{Mode: None}, Options{Audit: log.add, AuditRate: 1, AuditBurst: 3})
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	p.events.now, p.events.last = clock.now, clock.now()
	log.p = p
	for i := 0; i < 10; i++ {
		p.decide(false, "x.test", 53, ProtoDNS, ReasonDNSNotAllowed, nil)
	}
	flush(p)
	if len(log.evs) != 3 {
		t.Fatalf("%d events, want 3", len(log.evs))
	}
	clock.advance(1100 * time.Millisecond) // one token more
	p.decide(false, "x.test", 53, ProtoDNS, ReasonDNSNotAllowed, nil)
	if ev := log.last(); ev["suppressed_before"] != int64(7) {
		t.Errorf("suppressed count: %v", ev)
	}
	p.Close(time.Second)
	p.decide(false, "x.test", 53, ProtoDNS, ReasonDNSNotAllowed, nil) // dropped after Close
}

func TestHelperHandoff(t *testing.T) {
	p, log, web, _ := proxyFixture(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "e.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go p.Serve(l)
	// Hand over one end of a socketpair the way the helper does.
	pair, err := socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer pair[0].Close()
	done := make(chan error, 1)
	go func() { done <- handoff.Send(sock, "10.0.2.101:"+portOf(web), int(pair[1].Fd())) }()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	pair[1].Close()
	pair[0].Write([]byte("GET / HTTP/1.0\r\nHost: ok.test\r\n\r\n"))
	b2, _ := io.ReadAll(pair[0])
	if !bytes.Contains(b2, []byte("hello ok.test")) {
		t.Errorf("response %q", b2)
	}
	if ev := log.last(); ev["kind"] != KindAllowed {
		t.Errorf("audit %v", ev)
	}
}

func TestParseForward(t *testing.T) {
	for in, want := range map[string]Publish{
		"3000":             {HostAddr: "127.0.0.1", HostPort: 0, GuestPort: 3000},
		"0:3000":           {HostAddr: "127.0.0.1", HostPort: 0, GuestPort: 3000},
		"127.0.0.1:0:3000": {HostAddr: "127.0.0.1", HostPort: 0, GuestPort: 3000},
		"8080:80":          {HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80},
	} {
		got, err := ParseForward(in)
		if err != nil || got != want {
			t.Errorf("ParseForward(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "0:0", "1.2.3:0:80", "70000"} {
		if _, err := ParseForward(bad); err == nil {
			t.Errorf("ParseForward(%q) accepted", bad)
		}
	}
}
