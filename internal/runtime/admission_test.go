package runtime

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

func testRuntime(t *testing.T) *Runtime {
	t.Helper()
	base := t.TempDir()
	d := paths.Dirs{Data: filepath.Join(base, "data"), Cache: filepath.Join(base, "cache"), State: filepath.Join(base, "state")}
	return &Runtime{Dirs: d, Layout: sandbox.Layout{Root: d.State}}
}

// admitForReal runs Up's admission path on o with an already resolved
// image: the same planFor, then signing, the nonce ledger and the audit
// chain.
func admitForReal(t *testing.T, r *Runtime, o UpOptions, imageProfile string) (*plan.Admission, error) {
	t.Helper()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	img := &bootImage{
		ref:     sandbox.ImageRef{Name: "minimal", Digest: "sha256:" + strings.Repeat("a", 64), ImageProfile: imageProfile},
		kernel:  &image.Kernel{Digest: "sha256:" + strings.Repeat("b", 64)},
		profile: imageProfile,
	}
	id := sandbox.NewID()
	in, err := planFor(&o, img, plan.BackendQEMU, id, "sb-"+id)
	if err != nil {
		return nil, err
	}
	return r.admit(context.Background(), in, t.TempDir())
}

func rule(err error) string {
	var pd *plan.PolicyDenied
	if errors.As(err, &pd) {
		return pd.Rule
	}
	if err != nil {
		return "error"
	}
	return ""
}

// TestDryRunAgreesWithAdmission is issue 17: the dry run's verdict and
// real admission's come from one function, over a table of inputs.
func TestDryRunAgreesWithAdmission(t *testing.T) {
	allow := netpolicy.Config{Mode: netpolicy.Allowlist, Allow: []netpolicy.Rule{{Host: "example.com", Port: 443}}}
	pub := func(addr string) netpolicy.Config {
		return netpolicy.Config{Mode: netpolicy.None, Publish: []netpolicy.Publish{{HostAddr: addr, HostPort: 8080, GuestPort: 80}}}
	}
	cases := []struct {
		name string
		o    UpOptions
		ack  bool
		want string // rule of the refusal, "" admitted
	}{
		{"default", UpOptions{}, false, ""},
		{"restrictive", UpOptions{RunProfile: "restrictive"}, false, ""},
		{"restrictive env", UpOptions{RunProfile: "restrictive", Env: map[string]string{"A": "1"}}, false, plan.RuleEnvForbidden},
		{"restrictive network", UpOptions{RunProfile: "restrictive", Network: allow}, false, plan.RuleNetForbidden},
		{"restrictive port", UpOptions{RunProfile: "restrictive", Network: pub("127.0.0.1")}, false, plan.RulePublishForbidden},
		{"standard network", UpOptions{RunProfile: "standard", Network: allow}, false, ""},
		{"standard port loopback", UpOptions{RunProfile: "standard", Network: pub("127.0.0.1")}, false, ""},
		{"standard port any", UpOptions{RunProfile: "standard", Network: pub("0.0.0.0")}, false, plan.RulePublishNonLoopback},
		{"dev port any", UpOptions{RunProfile: "dev", Network: pub("0.0.0.0")}, false, ""},
		{"standard unrestricted", UpOptions{RunProfile: "standard", Network: netpolicy.Config{Mode: netpolicy.Unrestricted}}, false, plan.RuleNetUnrestricted},
		{"permissive no ack", UpOptions{RunProfile: "permissive"}, false, plan.RulePermissiveAck},
		{"permissive ack", UpOptions{RunProfile: "permissive", Network: netpolicy.Config{Mode: netpolicy.Unrestricted}}, true, ""},
		{"unknown profile", UpOptions{RunProfile: "bogus"}, false, plan.RuleUnknownProfile},
		{"bad env key", UpOptions{Env: map[string]string{"1X": "y"}}, false, "error"},
		{"bad cpus", UpOptions{CPUs: 1000}, false, "error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.ack {
				t.Setenv(plan.AckPermissiveEnv, "1")
			} else {
				t.Setenv(plan.AckPermissiveEnv, "")
			}
			r := testRuntime(t)
			p, dryErr := r.WouldAdmit(tc.o)
			_, realErr := admitForReal(t, r, tc.o, plan.ImageDev)
			if rule(dryErr) != rule(realErr) {
				t.Fatalf("dry run says %q (%v), admission says %q (%v)", rule(dryErr), dryErr, rule(realErr), realErr)
			}
			if rule(dryErr) != tc.want {
				t.Fatalf("verdict %q (%v), want %q", rule(dryErr), dryErr, tc.want)
			}
			if (errors.Is(dryErr, ErrPolicy)) != (errors.Is(realErr, ErrPolicy)) {
				t.Fatalf("classification differs: %v / %v", dryErr, realErr)
			}
			if tc.want == "" && (p == nil || p.Backend != plan.BackendQEMU) {
				t.Fatalf("dry run plan %+v", p)
			}
		})
	}
}

// TestConsoleRefusedUnderRestrictive is issue 11 item 11 in the plan: the
// console flag of an admitted plan follows the run and image profiles, and
// a plan that asks for a console its profile refuses is refused.
func TestConsoleRefusedUnderRestrictive(t *testing.T) {
	for _, tc := range []struct {
		run, img string
		want     bool
	}{
		{"restrictive", plan.ImageDev, false},
		{"standard", plan.ImageDev, false},
		{"dev", plan.ImageDev, true},
		{"dev", plan.ImageSealed, false},
	} {
		r := testRuntime(t)
		adm, err := admitForReal(t, r, UpOptions{RunProfile: tc.run}, tc.img)
		if err != nil {
			t.Fatal(err)
		}
		if adm.Plan.Console != tc.want || adm.Plan.ImageProfile != tc.img || string(adm.Plan.RunProfile) != tc.run {
			t.Errorf("%s on %s: console %v, want %v", tc.run, tc.img, adm.Plan.Console, tc.want)
		}
	}
	// Asking outright under restrictive is refused by admission.
	r := testRuntime(t)
	w, err := r.witness()
	if err != nil {
		t.Fatal(err)
	}
	in := plan.Input{SandboxID: "abc", ImageDigest: "sha256:" + strings.Repeat("a", 64), KernelDigest: "sha256:" + strings.Repeat("b", 64),
		Resources: plan.Resources{CPUs: 1, MemoryMiB: 256}, RunProfile: plan.Restrictive, Console: true}
	sp, err := plan.Prepare(in, w.signer, nowUTC())
	if err != nil {
		t.Fatal(err)
	}
	_, err = plan.Admit(context.Background(), sp, plan.AdmitOptions{TrustedKey: w.signer.Public,
		Ledger: plan.OpenLedger(plan.LedgerPath(r.Dirs.Data)), StorePath: filepath.Join(t.TempDir(), "plan.json")})
	if rule(err) != plan.RuleConsoleForbidden {
		t.Fatalf("console under restrictive: %v", err)
	}
}
