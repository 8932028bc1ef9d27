package netpolicy

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An MCP client (or any caller that is not the operator's command line)
// cannot reach the host's loopback through host.mvm.internal.
func TestMCPOriginRefusesHostInternal(t *testing.T) {
	alias := Rule{Host: HostAlias, Port: 2375}
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"mcp", Config{Mode: Allowlist, Origin: OriginMCP, Allow: []Rule{alias}}},
		{"no origin (as MCP built it before)", Config{Mode: Allowlist, Allow: []Rule{alias}}},
		{"manifest", Config{Mode: Allowlist, Origin: OriginManifest, Allow: []Rule{alias}}},
		{"manifest entry in an operator config", Config{Mode: Allowlist, Origin: OriginCLI,
			Allow: []Rule{{Host: HostAlias, Port: 22, Origin: OriginManifest}}}},
	} {
		err := c.cfg.Validate()
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), HostAlias) {
			t.Errorf("%s: Validate = %v, want a refusal naming %s", c.name, err, HostAlias)
		}
		// Even if such a config reached the proxy, nothing is forwarded.
		p := NewProxy(c.cfg, Options{})
		if len(p.allowed) != 0 {
			t.Errorf("%s: proxy allows %v", c.name, p.allowed)
		}
	}
	if _, _, err := Build(Request{Allow: []string{HostAlias + ":2375"}, Origin: OriginMCP}, env(nil)); !errors.Is(err, ErrRefused) {
		t.Errorf("Build from MCP: %v", err)
	}
	// The operator's command line may.
	cfg, _, err := Build(Request{Allow: []string{HostAlias + ":8080"}, Origin: OriginCLI}, env(nil))
	if err != nil || len(NewProxy(cfg, Options{}).allowed) != 1 {
		t.Errorf("operator: %+v %v", cfg, err)
	}
	if err := (Config{Mode: Allowlist, Origin: "model", Allow: []Rule{{Host: "a.example", Port: 443}}}).Validate(); err == nil {
		t.Error("unknown origin accepted")
	}
}

func TestAllowPrivateByOperator(t *testing.T) {
	// Only the operator's command line may allow private answers.
	for _, o := range []Origin{OriginMCP, OriginManifest, ""} {
		c := Config{Mode: Allowlist, Origin: o, AllowPrivate: true, Allow: []Rule{{Host: "mirror.corp", Port: 443}}}
		if err := c.Validate(); !errors.Is(err, ErrRefused) {
			t.Errorf("AllowPrivate from %q: %v", o, err)
		}
	}
	if _, _, err := Build(Request{AllowPrivate: true, Origin: OriginCLI}, env(nil)); err == nil {
		t.Error("--allow-private without an allowlist accepted")
	}
	cfg, _, err := Build(Request{Allow: []string{"mirror.corp"}, AllowPrivate: true, Origin: OriginCLI}, env(nil))
	if err != nil || !cfg.AllowPrivate {
		t.Fatalf("operator: %+v %v", cfg, err)
	}
	// The proxy's resolver follows it; loopback, metadata and this host's
	// own addresses stay blocked.
	dns := &fakeDNS{m: map[string][]netip.Addr{}}
	r := NewProxy(cfg, Options{}).opt.Resolver
	r.Lookup, r.HostAddrs = dns.lookup, []netip.Addr{netip.MustParseAddr("192.168.1.5")}
	ctx := context.Background()
	for i, a := range []string{"10.1.2.3", "192.168.1.1", "100.64.0.1", "fd00::1"} {
		n := "ok" + string(rune('a'+i)) + ".corp"
		dns.set(n, a)
		if _, reason := r.Resolve(ctx, n); reason != "" {
			t.Errorf("allowed private %s: %q", a, reason)
		}
	}
	for i, a := range []string{"127.0.0.1", "169.254.169.254", "168.63.129.16", "192.168.1.5"} {
		n := "no" + string(rune('a'+i)) + ".corp"
		dns.set(n, a)
		if _, reason := r.Resolve(ctx, n); reason != ReasonBlockedAddress {
			t.Errorf("%s with --allow-private: %q", a, reason)
		}
	}
}

// A guest opening connections in a loop (each one a helper process) is
// refused beyond the rate, and the refusals are audited.
func TestEgressRateLimited(t *testing.T) {
	p, log, web, _ := proxyFixture(t)
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	p.conns = newBucket(2, 3)
	p.conns.now, p.conns.last = clock.now, clock.now()
	target := "10.0.2.101:" + portOf(web)
	get := func() string {
		c := dialVia(p, target)
		c.Write([]byte("GET / HTTP/1.0\r\nHost: ok.test\r\n\r\n"))
		b := make([]byte, 4096)
		n, _ := c.Read(b)
		c.Close()
		return string(b[:n])
	}
	for i := 0; i < 3; i++ {
		if out := get(); !strings.Contains(out, "200 OK") {
			t.Fatalf("connection %d within the burst: %q", i, out)
		}
	}
	if out := get(); out != "" {
		t.Errorf("connection beyond the burst answered: %q", out)
	}
	if ev := log.last(); ev["kind"] != KindDenied || ev["reason"] != ReasonRateLimited {
		t.Errorf("audit %v", ev)
	}
	c := dialVia(p, "dns") // DNS counts too
	c.Read(make([]byte, 1))
	if ev := log.last(); ev["reason"] != ReasonRateLimited || ev["port"] != 53 {
		t.Errorf("dns audit %v", ev)
	}
	clock.advance(time.Second) // two more tokens
	if out := get(); !strings.Contains(out, "200 OK") {
		t.Errorf("after a second: %q", out)
	}
}

// Plain HTTP to a CDN front end reaches every site on it: presets allow
// HTTPS only.
func TestPresetsHTTPSOnly(t *testing.T) {
	for name, entries := range Presets {
		for _, e := range entries {
			if !strings.HasSuffix(e, ":443") {
				t.Errorf("preset %s: %s is not HTTPS", name, e)
			}
		}
	}
}

// QEMU runs the small mvm-egress helper per guest connection when it is
// installed beside mvmctl, and `mvmctl __egress` otherwise.
func TestHelperBinaryPreferred(t *testing.T) {
	dir := t.TempDir()
	mvmctl := filepath.Join(dir, "mvmctl")
	os.WriteFile(mvmctl, []byte("#!/bin/sh\n"), 0o755)
	if got := HelperExe(mvmctl); got != mvmctl {
		t.Errorf("without the helper: %s", got)
	}
	if cmd, _ := HelperCmdline(HelperExe(mvmctl), "dns"); cmd != "'"+mvmctl+"' __egress egress.sock dns" {
		t.Errorf("fallback cmdline %q", cmd)
	}
	helper := filepath.Join(dir, HelperBinary)
	os.WriteFile(helper, []byte("#!/bin/sh\n"), 0o644)
	if got := HelperExe(mvmctl); got != mvmctl {
		t.Errorf("a helper that is not executable was chosen: %s", got)
	}
	os.Chmod(helper, 0o755)
	if got := HelperExe(mvmctl); got != helper {
		t.Errorf("with the helper: %s", got)
	}
	if cmd, _ := HelperCmdline(HelperExe(mvmctl), "10.0.2.101:443"); cmd != "'"+helper+"' egress.sock 10.0.2.101:443" {
		t.Errorf("helper cmdline %q", cmd)
	}
}
