package netpolicy

import (
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
