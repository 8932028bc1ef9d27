package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

func cliNet(t *testing.T, allow ...string) netpolicy.Config {
	t.Helper()
	cfg, _, err := netpolicy.Build(netpolicy.Request{Allow: allow, Origin: netpolicy.OriginCLI}, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A manifest's egress is applied only with the operator's consent, is
// shown before boot, and never reaches the host's loopback.
func TestManifestEgressNeedsConsent(t *testing.T) {
	var notices []string
	notice := func(s string) { notices = append(notices, s) }

	// Without consent: refused, naming what was asked.
	o := UpOptions{Network: cliNet(t), Notice: notice}
	err := o.manifestNetwork("", []string{"pypi.org", "files.pythonhosted.org"})
	var me *ManifestNetworkError
	if !errors.As(err, &me) || !errors.Is(err, ErrPolicy) || len(me.Missing) != 2 || o.Network.Mode != netpolicy.None {
		t.Fatalf("no consent: %v (network %+v)", err, o.Network)
	}
	if strings.Contains(err.Error(), "--") {
		t.Errorf("runtime error names a CLI flag: %v", err)
	}

	// With consent: applied, marked as the manifest's, and shown.
	notices = nil
	o = UpOptions{Network: cliNet(t), AllowManifestNetwork: true, Notice: notice}
	if err := o.manifestNetwork("", []string{"pypi.org"}); err != nil {
		t.Fatal(err)
	}
	if o.Network.Mode != netpolicy.Allowlist || len(o.Network.Allow) != 1 || o.Network.RuleOrigin(o.Network.Allow[0]) != netpolicy.OriginManifest {
		t.Errorf("consented: %+v", o.Network)
	}
	if len(notices) != 1 || !strings.Contains(notices[0], "pypi.org:443") {
		t.Errorf("notices %q", notices)
	}
	if err := o.Validate(); err != nil {
		t.Errorf("consented config: %v", err)
	}

	// The same entries on the command line: no consent needed, still shown.
	notices = nil
	o = UpOptions{Network: cliNet(t, "pypi.org", "example.com"), Notice: notice}
	if err := o.manifestNetwork("", []string{"pypi.org:443"}); err != nil || len(o.Network.Allow) != 2 || len(notices) != 1 {
		t.Errorf("already granted: %v %+v %q", err, o.Network, notices)
	}
	// One entry more than the command line grants: refused.
	o = UpOptions{Network: cliNet(t, "pypi.org")}
	if err := o.manifestNetwork("", []string{"pypi.org", "evil.example"}); !errors.As(err, &me) || len(me.Missing) != 1 || me.Missing[0] != "evil.example:443" {
		t.Errorf("partly granted: %v", err)
	}

	// host.mvm.internal from a manifest: never, even with consent.
	o = UpOptions{Network: cliNet(t), AllowManifestNetwork: true}
	if err := o.manifestNetwork("", []string{netpolicy.HostAlias + ":22"}); !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), netpolicy.HostAlias) {
		t.Errorf("host alias from a manifest: %v", err)
	}
	// Nor with the operator's own --allow host.mvm.internal:22 beside it:
	// the operator's entry is theirs; the manifest's request is refused.
	o = UpOptions{Network: cliNet(t, netpolicy.HostAlias+":22"), AllowManifestNetwork: true}
	if err := o.manifestNetwork("", []string{netpolicy.HostAlias + ":22"}); !errors.Is(err, ErrPolicy) {
		t.Errorf("host alias from a manifest beside the operator's: %v", err)
	}
	// No network asked for: nothing happens.
	o = UpOptions{Network: cliNet(t)}
	if err := o.manifestNetwork("none", nil); err != nil || o.Network.Mode != netpolicy.None {
		t.Errorf("none: %v %+v", err, o.Network)
	}
}

// The runtime refuses host.mvm.internal from an MCP client before
// anything is created.
func TestMCPOriginRefusesHostInternalAtUp(t *testing.T) {
	base := t.TempDir()
	d := paths.Dirs{Data: filepath.Join(base, "data"), Cache: filepath.Join(base, "cache"), State: filepath.Join(base, "state")}
	r := &Runtime{Dirs: d, Layout: sandbox.Layout{Root: d.State}, Exe: "/nonexistent/mvmctl"}
	for _, origin := range []netpolicy.Origin{netpolicy.OriginMCP, ""} {
		cfg := netpolicy.Config{Mode: netpolicy.Allowlist, Origin: origin, Allow: []netpolicy.Rule{{Host: netpolicy.HostAlias, Port: 2375}}}
		_, err := r.Up(context.Background(), UpOptions{Network: cfg, RunProfile: "standard"})
		if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), netpolicy.HostAlias) {
			t.Errorf("origin %q: Up = %v, want a policy refusal", origin, err)
		}
		cfg.Origin, cfg.Allow, cfg.AllowPrivate = origin, []netpolicy.Rule{{Host: "mirror.corp", Port: 443}}, true
		if _, err := r.Up(context.Background(), UpOptions{Network: cfg, RunProfile: "standard"}); !errors.Is(err, ErrPolicy) {
			t.Errorf("origin %q: AllowPrivate: Up = %v, want a policy refusal", origin, err)
		}
	}
	if ents, _ := os.ReadDir(d.State); len(ents) != 0 {
		t.Errorf("state left behind: %v", ents)
	}
}

// --allow-private is recorded in the plan the runtime admits.
func TestAllowPrivateRecordedInPlan(t *testing.T) {
	cfg, _, err := netpolicy.Build(netpolicy.Request{Allow: []string{"mirror.corp"}, AllowPrivate: true, Origin: netpolicy.OriginCLI}, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	n := UpOptions{Network: cfg}.PlanNetwork()
	if !n.AllowPrivate || len(n.Allow) != 1 {
		t.Errorf("plan network %+v", n)
	}
	b, _ := json.Marshal(n)
	if !strings.Contains(string(b), `"allow_private":true`) {
		t.Errorf("plan JSON %s", b)
	}
	cfg.AllowPrivate = false
	if b, _ := json.Marshal(UpOptions{Network: cfg}.PlanNetwork()); strings.Contains(string(b), "allow_private") {
		t.Errorf("allow_private recorded when not asked for: %s", b)
	}
}
