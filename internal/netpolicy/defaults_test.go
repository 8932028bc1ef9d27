package netpolicy

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// TestProxyDefaultBounds: the bounds docs/network.md and SPECIFICATION.md
// promise are what a proxy gets when nothing overrides them (the
// mechanisms are tested with small values in TestProxyConnLimit,
// TestEgressHelperBounded, TestAuditRateLimit, TestEgressRateLimited).
func TestProxyDefaultBounds(t *testing.T) {
	p := NewProxy(Config{}, Options{})
	defer p.Close(time.Second)
	o := p.opt
	checks := []struct {
		name      string
		got, want any
	}{
		{"concurrent connections", cap(p.sem), 256},
		{"concurrent DNS connections", cap(p.dnsSem), 16},
		{"peek timeout", o.PeekTimeout, 10 * time.Second},
		{"idle timeout", o.IdleTimeout, 5 * time.Minute},
		{"resolve+connect timeout", o.DialTimeout, 10 * time.Second},
		{"audit events per second", o.AuditRate, 20.0},
		{"audit burst", o.AuditBurst, 200.0},
		{"new connections per second", o.ConnRate, 50.0},
		{"new connection burst", o.ConnBurst, 100.0},
		{"peek bytes", MaxPeek, 16 << 10},
		{"allow entries", MaxRules, 64},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %v (%T), want %v (%T)", c.name, c.got, c.got, c.want, c.want)
		}
	}
}

// TestDNSMessageBounded: a DNS message over the forward longer than
// 4 KiB ends the connection unanswered (and unread).
func TestDNSMessageBounded(t *testing.T) {
	p, _, _, _ := proxyFixture(t)
	host, guest := net.Pipe()
	defer guest.Close()
	go func() { p.serveDNS(host); host.Close() }() // the caller closes
	guest.SetDeadline(time.Now().Add(10 * time.Second))
	var l [2]byte
	binary.BigEndian.PutUint16(l[:], maxDNSMessage+1)
	if _, err := guest.Write(l[:]); err != nil {
		t.Fatal(err)
	}
	// the proxy closes without reading the body: the write fails or the
	// read sees EOF, and no answer comes
	guest.Write(make([]byte, 16))
	if b, err := io.ReadAll(guest); len(b) != 0 || err != nil {
		t.Fatalf("oversized DNS message: read %d bytes, %v", len(b), err)
	}
	if maxDNSMessage != 4096 {
		t.Fatalf("maxDNSMessage %d; docs/network.md promises 4 KiB", maxDNSMessage)
	}
}
