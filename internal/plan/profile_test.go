package plan

import (
	"errors"
	"testing"
)

func TestParseProfile(t *testing.T) {
	for in, want := range map[string]Profile{"": Standard, "restrictive": Restrictive, "standard": Standard, "dev": Dev, "permissive": Permissive} {
		p, err := ParseProfile(in)
		if err != nil || p != want {
			t.Errorf("%q: %v %v", in, p, err)
		}
	}
	for _, bad := range []string{"Dev", "strict", "none"} {
		if _, err := ParseProfile(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestProfileValidate(t *testing.T) {
	ro := []Mount{{HostPath: "/src", GuestPath: "/work", ReadOnly: true}}
	rw := []Mount{{HostPath: "/src", GuestPath: "/work"}}
	allow := Network{Mode: NetAllowlist, Allow: []string{"pypi.org", "*.github.com:443", "10.0.0.0/8", "1.2.3.4:80"}}
	open := Network{Mode: NetUnrestricted}
	env := []string{"FOO", "_bar1"}
	ack := true

	type R = Request
	cases := []struct {
		profile Profile
		req     Request
		rule    string // "" means allowed
	}{
		{Restrictive, R{}, ""},
		{Restrictive, R{EnvKeys: env}, RuleEnvForbidden},
		{Restrictive, R{Mounts: ro}, RuleMountForbidden},
		{Restrictive, R{Network: allow}, RuleNetForbidden},
		{Restrictive, R{Network: open}, RuleNetForbidden},
		{Restrictive, R{Console: true}, RuleConsoleForbidden},

		{Standard, R{EnvKeys: env, Mounts: ro}, ""},
		{Standard, R{Network: allow}, ""},
		{Standard, R{Mounts: rw}, RuleMountReadWrite},
		{Standard, R{Network: open}, RuleNetUnrestricted},
		{Standard, R{Network: Network{Mode: NetAllowlist}}, RuleNetAllowlist},
		{Standard, R{Network: Network{Mode: NetAllowlist, Allow: []string{"bad host"}}}, RuleNetAllowlist},
		{Standard, R{Network: Network{Mode: NetNone, Allow: []string{"a.com"}}}, RuleNetMode},
		{Standard, R{Network: Network{Mode: "wide"}}, RuleNetMode},
		{Standard, R{Console: true}, RuleConsoleForbidden},
		{Standard, R{EnvKeys: []string{"1BAD"}}, RuleEnvKeySyntax},
		{Standard, R{EnvKeys: []string{"A-B"}}, RuleEnvKeySyntax},
		{Standard, R{EnvKeys: []string{"A=B"}}, RuleEnvKeySyntax},
		{Standard, R{EnvKeys: []string{""}}, RuleEnvKeySyntax},
		{Standard, R{EnvKeys: []string{"A", "A"}}, RuleEnvDuplicate},
		{Standard, R{Mounts: []Mount{{HostPath: "src", GuestPath: "/w", ReadOnly: true}}}, RuleMountPath},
		{Standard, R{Mounts: []Mount{{HostPath: "/src/../etc", GuestPath: "/w", ReadOnly: true}}}, RuleMountPath},
		{Standard, R{Mounts: []Mount{{HostPath: "/src", GuestPath: "/", ReadOnly: true}}}, RuleMountPath},

		{Dev, R{EnvKeys: env, Mounts: rw, Network: allow, Console: true}, RuleMountReadWrite},
		{Dev, R{EnvKeys: env, Mounts: rw, AllowRWMount: true, Network: allow, Console: true}, ""},
		{Dev, R{Network: open}, RuleNetUnrestricted},

		{Permissive, R{}, RulePermissiveAck},
		{Permissive, R{Network: open, Mounts: rw, EnvKeys: env, Console: true, AckPermissive: ack}, ""},

		{Profile("bogus"), R{}, RuleUnknownProfile},
	}
	for i, tc := range cases {
		err := tc.profile.Validate(tc.req)
		if tc.rule == "" {
			if err != nil {
				t.Errorf("#%d %s: unexpected denial: %v", i, tc.profile, err)
			}
			continue
		}
		var pd *PolicyDenied
		if !errors.As(err, &pd) || pd.Rule != tc.rule {
			t.Errorf("#%d %s: got %v, want rule %s", i, tc.profile, err, tc.rule)
		}
	}
}

func TestPermissiveAcknowledged(t *testing.T) {
	look := func(v string, ok bool) func(string) (string, bool) {
		return func(k string) (string, bool) {
			if k == AckPermissiveEnv {
				return v, ok
			}
			return "", false
		}
	}
	if !PermissiveAcknowledged(look("1", true)) || PermissiveAcknowledged(look("true", true)) || PermissiveAcknowledged(look("", false)) {
		t.Fatal("ack must be exactly 1")
	}
	t.Setenv(AckPermissiveEnv, "1")
	if !PermissiveAcknowledged(nil) {
		t.Fatal("os env not read")
	}
}
