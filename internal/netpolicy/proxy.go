package netpolicy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mvm-sandbox/mvm/internal/guestnet"
	"github.com/mvm-sandbox/mvm/internal/netpolicy/handoff"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// Audit kinds.
const (
	KindAllowed = "net.allowed"
	KindDenied  = "net.denied"
)

// Refusal reasons besides the resolver's.
const (
	ReasonNotAllowed     = "not_allowed"
	ReasonNameMismatch   = "name_mismatch"
	ReasonUnknownProto   = "unknown_protocol"
	ReasonNoName         = "no_server_name"
	ReasonMalformed      = "malformed"
	ReasonTooLarge       = "header_too_large"
	ReasonPeekTimeout    = "timeout"
	ReasonTooMany        = "too_many_connections"
	ReasonConnectFailed  = "connect_failed"
	ReasonDNSNotAllowed  = "name_not_allowed"
	ReasonPortMismatch   = "port_mismatch"
	ReasonDNSUnsupported = "unsupported_query"
	ReasonRateLimited    = "rate_limited"
)

// Options tune a Proxy. Zero values take the defaults.
type Options struct {
	// Audit receives every decision. Fields hold names, ports, protocol,
	// decision and reason; never payload bytes.
	Audit func(kind string, fields map[string]any)
	// Resolver resolves allowed names on the host (NewResolver() if nil).
	Resolver *Resolver
	// Dial connects upstream (a net.Dialer if nil).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxConns bounds concurrent proxied connections (default 256).
	MaxConns int
	// MaxDNSConns bounds concurrent DNS connections (default 16) and
	// DNSIdle closes one idle that long (10 s).
	MaxDNSConns int
	DNSIdle     time.Duration
	// ConnRate and ConnBurst bound new guest connections per second, DNS
	// included: each one is a process QEMU started (the egress helper), so
	// a guest opening connections in a loop is refused beyond this rate
	// (50/s, burst 100), and the refusals are audited.
	ConnRate  float64
	ConnBurst float64
	// PeekTimeout bounds the wait for the guest's first bytes (10 s).
	PeekTimeout time.Duration
	// IdleTimeout closes a connection idle in both directions (5 min).
	IdleTimeout time.Duration
	// DialTimeout bounds resolving and connecting upstream (10 s).
	DialTimeout time.Duration
	// AuditRate and AuditBurst limit audit events per second; the excess
	// is counted and reported on the next event (20/s, burst 200).
	AuditRate  float64
	AuditBurst float64
}

// Proxy is a sandbox's egress proxy and DNS server.
type Proxy struct {
	cfg     Config
	opt     Options
	byAddr  map[netip.Addr]string
	addrOf  map[string]netip.Addr
	allowed map[Rule]bool
	sem     chan struct{}
	dnsSem  chan struct{}
	conns   *bucket

	auditMu    sync.Mutex
	events     *bucket
	suppressed int64
	auditQ     chan auditEvent
	auditDone  chan struct{}
	closeOnce  sync.Once

	Conns atomic.Int64 // connections being proxied now
}

// NewProxy returns the proxy enforcing cfg.
func NewProxy(cfg Config, o Options) *Proxy {
	if o.Resolver == nil {
		o.Resolver = NewResolver()
		o.Resolver.AllowPrivate = cfg.AllowPrivate
	}
	if o.Dial == nil {
		d := &net.Dialer{}
		o.Dial = d.DialContext
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 256
	}
	if o.PeekTimeout <= 0 {
		o.PeekTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 5 * time.Minute
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.AuditRate <= 0 {
		o.AuditRate = 20
	}
	if o.AuditBurst <= 0 {
		o.AuditBurst = 200
	}
	if o.MaxDNSConns <= 0 {
		o.MaxDNSConns = 16
	}
	if o.DNSIdle <= 0 {
		o.DNSIdle = 10 * time.Second
	}
	if o.ConnRate <= 0 {
		o.ConnRate = 50
	}
	if o.ConnBurst <= 0 {
		o.ConnBurst = 100
	}
	p := &Proxy{cfg: cfg, opt: o, byAddr: map[netip.Addr]string{}, addrOf: cfg.GuestAddrs(),
		allowed: map[Rule]bool{}, sem: make(chan struct{}, o.MaxConns), dnsSem: make(chan struct{}, o.MaxDNSConns),
		conns: newBucket(o.ConnRate, o.ConnBurst), events: newBucket(o.AuditRate, o.AuditBurst)}
	for n, a := range p.addrOf {
		p.byAddr[a] = n
	}
	// Audit appends (signing, file locks) never delay a guest connection:
	// one goroutine writes them in order.
	p.auditQ = make(chan auditEvent, 1024)
	p.auditDone = make(chan struct{})
	// The writer ranges over its own copy: Close sets p.auditQ to nil, and
	// a writer that started after that would range over nil forever.
	q := p.auditQ
	go func() {
		defer close(p.auditDone)
		for ev := range q {
			if ev.done != nil {
				close(ev.done)
				continue
			}
			if p.opt.Audit != nil {
				p.opt.Audit(ev.kind, ev.fields)
			}
		}
	}()
	for _, r := range cfg.Allow {
		if r.Host == HostAlias && cfg.RuleOrigin(r) != OriginCLI {
			continue // Validate refuses it; never forward it either
		}
		p.allowed[Rule{Host: r.Host, Port: r.Port}] = true
	}
	return p
}

// bucket is a token bucket: rate tokens a second, at most burst.
type bucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
	now    func() time.Time
}

func newBucket(rate, burst float64) *bucket {
	return &bucket{rate: rate, burst: burst, tokens: burst, last: time.Now(), now: time.Now}
}

// take spends a token if there is one.
func (b *bucket) take() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (p *Proxy) audit(kind string, fields map[string]any) {
	if p.opt.Audit == nil {
		return
	}
	p.auditMu.Lock()
	if p.auditQ == nil {
		p.auditMu.Unlock()
		return
	}
	if !p.events.take() {
		p.suppressed++
		p.auditMu.Unlock()
		return
	}
	if p.suppressed > 0 {
		fields["suppressed_before"] = p.suppressed
		p.suppressed = 0
	}
	select {
	case p.auditQ <- auditEvent{kind: kind, fields: fields}:
	default:
		p.suppressed++
	}
	p.auditMu.Unlock()
}

type auditEvent struct {
	kind   string
	fields map[string]any
	done   chan struct{} // a flush marker (tests)
}

// Close stops taking audit events and waits up to timeout for the queued
// ones to be written. Connections still open are not affected.
func (p *Proxy) Close(timeout time.Duration) {
	p.closeOnce.Do(func() {
		p.auditMu.Lock()
		close(p.auditQ)
		p.auditQ = nil
		p.auditMu.Unlock()
	})
	select {
	case <-p.auditDone:
	case <-time.After(timeout):
	}
}

func (p *Proxy) decide(allow bool, name string, port int, proto, reason string, extra map[string]any) {
	f := map[string]any{"name": name, "port": port, "proto": proto}
	kind := KindDenied
	if allow {
		kind = KindAllowed
		f["decision"] = "allow"
	} else {
		f["decision"] = "deny"
		f["reason"] = reason
	}
	for k, v := range extra {
		f[k] = v
	}
	p.audit(kind, f)
}

// Serve accepts connections from egress helpers on l (the unix socket
// EgressSocket): each carries one guest connection as a file descriptor.
func (p *Proxy) Serve(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go p.accept(c)
	}
}

func (p *Proxy) accept(c net.Conn) {
	defer c.Close()
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return
	}
	uc.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return
	}
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if f, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, f...)
			}
		}
	}
	for _, fd := range fds[min(1, len(fds)):] {
		unix.Close(fd) // only one is expected
	}
	if len(fds) == 0 {
		return
	}
	f := os.NewFile(uintptr(fds[0]), "guest")
	guest, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return
	}
	target, ok := strings.CutPrefix(strings.TrimSpace(string(buf[:n])), handoff.Prefix)
	if !ok {
		guest.Close()
		return
	}
	uc.Write([]byte(handoff.Ack))
	p.Handle(guest, target)
}

// Handle serves one guest connection that arrived on the forward for
// target ("dns" or GUESTADDR:PORT). It closes guest.
func (p *Proxy) Handle(guest net.Conn, target string) {
	defer guest.Close()
	ap, err := netip.ParseAddrPort(target)
	name, known := p.byAddr[ap.Addr()]
	port := int(ap.Port())
	if !p.conns.take() {
		if target == "dns" {
			name, port = "", guestnet.DNSPort
		}
		p.decide(false, name, port, "", ReasonRateLimited, nil)
		return
	}
	if target == "dns" {
		select {
		case p.dnsSem <- struct{}{}:
			defer func() { <-p.dnsSem }()
		default:
			p.decide(false, "", guestnet.DNSPort, ProtoDNS, ReasonTooMany, nil)
			return
		}
		p.serveDNS(guest)
		return
	}
	if err != nil || !known || !p.allowed[Rule{Host: name, Port: port}] {
		p.decide(false, "", port, "", ReasonNotAllowed, map[string]any{"guest_addr": target})
		return
	}
	select {
	case p.sem <- struct{}{}:
		defer func() { <-p.sem }()
	default:
		p.decide(false, name, port, "", ReasonTooMany, nil)
		return
	}
	p.Conns.Add(1)
	defer p.Conns.Add(-1)

	// Read until the first request says where it goes.
	guest.SetReadDeadline(time.Now().Add(p.opt.PeekTimeout))
	buf := make([]byte, 0, 4096)
	var proto, host string
	var hport int
	for {
		if len(buf) == cap(buf) {
			if cap(buf) >= MaxPeek {
				p.decide(false, name, port, proto, ReasonTooLarge, nil)
				return
			}
			nb := make([]byte, len(buf), min(2*cap(buf), MaxPeek))
			copy(nb, buf)
			buf = nb
		}
		n, rerr := guest.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		proto, host, hport, err = Inspect(buf)
		if err == nil {
			break
		}
		if err != errIncomplete {
			p.decide(false, name, port, proto, peekReason(err), nil)
			return
		}
		if rerr != nil {
			reason := ReasonMalformed
			if ne, ok := rerr.(net.Error); ok && ne.Timeout() {
				reason = ReasonPeekTimeout
			}
			if len(buf) > 0 || reason == ReasonPeekTimeout {
				p.decide(false, name, port, proto, reason, nil)
			}
			return
		}
	}
	guest.SetReadDeadline(time.Time{})
	if host != name {
		p.decide(false, name, port, proto, ReasonNameMismatch, map[string]any{"requested": host})
		return
	}
	if hport != 0 && hport != port {
		p.decide(false, name, port, proto, ReasonPortMismatch, nil)
		return
	}
	if proto == ProtoHTTP {
		if req, err := parseRequestHeader(buf); err != nil {
			p.decide(false, name, port, proto, peekReason(err), nil)
			return
		} else if req.upgrade {
			p.decide(false, name, port, proto, ReasonUpgrade, nil)
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.opt.DialTimeout)
	addrs, reason := p.opt.Resolver.Resolve(ctx, name)
	if reason != "" {
		cancel()
		p.decide(false, name, port, proto, reason, nil)
		return
	}
	var up net.Conn
	var used netip.Addr
	for _, a := range addrs {
		up, err = p.opt.Dial(ctx, "tcp", netip.AddrPortFrom(a, uint16(port)).String())
		if err == nil {
			used = a
			break
		}
	}
	cancel()
	if up == nil {
		p.decide(false, name, port, proto, ReasonConnectFailed, nil)
		return
	}
	defer up.Close()
	p.decide(true, name, port, proto, "", map[string]any{"addr": used.String()})
	if proto != ProtoHTTP {
		// TLS: the rest is encrypted; the SNI decided the destination.
		if _, err := up.Write(buf); err != nil {
			return
		}
		splice(guest, up, p.opt.IdleTimeout, nil)
		return
	}
	// HTTP: every request on the connection is checked, not just the
	// first (buf holds the first and maybe more).
	splice(guest, up, p.opt.IdleTimeout, func(dst io.Writer, src io.Reader) {
		r := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(buf), src), 32<<10)
		reason, requested, n, _ := copyRequests(dst, r, name, port)
		if reason != "" {
			extra := map[string]any{"request": n + 1}
			if requested != "" {
				extra["requested"] = requested
			}
			// Nothing more goes upstream (splice half-closes it); the
			// answers to the requests already forwarded still reach the
			// guest, then the connection ends.
			p.decide(false, name, port, proto, reason, extra)
		}
	})
}

func peekReason(err error) string {
	switch err {
	case ErrNotTLSOrHTTP:
		return ReasonUnknownProto
	case ErrNoSNI, ErrNoHost:
		return ReasonNoName
	case ErrHeaderTooLarge:
		return ReasonTooLarge
	}
	return ReasonMalformed
}

// splice copies both ways between the guest and upstream until both
// directions end or the connection is idle for idle. fromGuest, when not
// nil, does the guest-to-upstream copy (it returns when the guest's side
// ends or it refuses).
func splice(guest, up net.Conn, idle time.Duration, fromGuest func(dst io.Writer, src io.Reader)) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	touch := func(r io.Reader) io.Reader { return &touchReader{r: r, last: &last} }
	if fromGuest == nil {
		fromGuest = func(dst io.Writer, src io.Reader) { io.CopyBuffer(dst, src, make([]byte, 64<<10)) }
	}
	closeWrite := func(c net.Conn) {
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			c.Close()
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		fromGuest(up, touch(guest))
		closeWrite(up)
	}()
	go func() {
		defer wg.Done()
		io.CopyBuffer(guest, touch(up), make([]byte, 64<<10))
		closeWrite(guest)
	}()
	go func() { wg.Wait(); close(done) }()
	t := time.NewTicker(min(idle/4, 5*time.Second))
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if time.Since(time.Unix(0, last.Load())) > idle {
				guest.Close()
				up.Close()
				<-done
				return
			}
		}
	}
}

// touchReader records when data last arrived.
type touchReader struct {
	r    io.Reader
	last *atomic.Int64
}

func (t *touchReader) Read(b []byte) (int, error) {
	n, err := t.r.Read(b)
	if n > 0 {
		t.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// DNS over the forward: 2-byte length-prefixed messages (RFC 1035 4.2.2).
const maxDNSMessage = 4096

func (p *Proxy) serveDNS(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		c.SetReadDeadline(time.Now().Add(p.opt.DNSIdle))
		var l [2]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(l[:]))
		if n < 12 || n > maxDNSMessage {
			return
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(br, msg); err != nil {
			return
		}
		resp := p.AnswerDNS(msg)
		if resp == nil {
			return
		}
		out := make([]byte, 2+len(resp))
		binary.BigEndian.PutUint16(out, uint16(len(resp)))
		copy(out[2:], resp)
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// dnsTTL is the TTL of synthetic answers: the addresses never change
// during a sandbox's life.
const dnsTTL = 300

// AnswerDNS answers one DNS query: A records with the synthetic address
// of an allowed name, no data for other types of an allowed name, and
// NXDOMAIN for every other name. nil means the query was not parseable.
func (p *Proxy) AnswerDNS(query []byte) []byte {
	var parser dnsmessage.Parser
	h, err := parser.Start(query)
	if err != nil || h.Response {
		return nil
	}
	qs, err := parser.AllQuestions()
	if err != nil {
		return nil
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), rh)
	b.EnableCompression()
	if h.OpCode != 0 || len(qs) != 1 || qs[0].Class != dnsmessage.ClassINET {
		rh.RCode = dnsmessage.RCodeNotImplemented
		if len(qs) != 1 {
			rh.RCode = dnsmessage.RCodeFormatError
		}
		b = dnsmessage.NewBuilder(make([]byte, 0, 512), rh)
		out, _ := b.Finish()
		return out
	}
	q := qs[0]
	name := strings.TrimSuffix(strings.ToLower(q.Name.String()), ".")
	addr, allowed := p.addrOf[name]
	qtype := strings.TrimPrefix(q.Type.String(), "Type")
	if !allowed {
		rh.RCode = dnsmessage.RCodeNameError
		b = dnsmessage.NewBuilder(make([]byte, 0, 512), rh)
		b.StartQuestions()
		b.Question(q)
		out, _ := b.Finish()
		shown := name
		if _, err := CanonicalName(name); err != nil || len(shown) > 253 {
			shown = "(invalid)"
		}
		p.decide(false, shown, 53, ProtoDNS, ReasonDNSNotAllowed, map[string]any{"qtype": qtype})
		return out
	}
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	if q.Type == dnsmessage.TypeA {
		b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: dnsTTL},
			dnsmessage.AResource{A: addr.As4()})
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	p.decide(true, name, 53, ProtoDNS, "", map[string]any{"qtype": qtype})
	return out
}

// ---- the helper QEMU runs for each guest connection ----

// HelperCommand is the hidden mvmctl command that can stand in for the
// helper binary (HelperBinary) when that is not installed.
const HelperCommand = "__egress"

// HelperBinary is the small helper QEMU runs per guest connection
// (cmd/mvm-egress), looked for beside mvmctl.
const HelperBinary = "mvm-egress"

// HelperExe returns the helper to run for a sandbox of mvmctl: HelperBinary
// beside it when present, else mvmctl itself (with HelperCommand).
func HelperExe(mvmctl string) string {
	if p, err := filepath.EvalSymlinks(mvmctl); err == nil {
		mvmctl = p
	}
	h := filepath.Join(filepath.Dir(mvmctl), HelperBinary)
	if st, err := os.Stat(h); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
		return h
	}
	return mvmctl
}

// HelperCmdline is the guest forward command for target: exe (HelperBinary,
// or mvmctl with HelperCommand) run in the sandbox directory (QEMU's
// working directory), passing the connection to the proxy over
// EgressSocket.
func HelperCmdline(exe, target string) (string, error) {
	if strings.ContainsAny(exe, "'\n\x00") {
		return "", fmt.Errorf("mvmctl path %q cannot be used in a guest forward", exe)
	}
	cmd := "'" + exe + "' "
	if filepath.Base(exe) != HelperBinary {
		cmd += HelperCommand + " "
	}
	return cmd + EgressSocket + " " + target, nil
}

// RunHelper is the body of `mvmctl __egress SOCKET TARGET` (see
// handoff.Run).
func RunHelper(sock, target string) error {
	log.SetOutput(io.Discard)
	return handoff.Run(sock, target)
}
