package plan

import (
	"errors"
	"testing"
)

func TestMountVolumeSecretPolicy(t *testing.T) {
	ro := Mount{HostPath: "/srv/data", GuestPath: "/data", ReadOnly: true}
	rw := Mount{HostPath: "/srv/data", GuestPath: "/data"}
	vol := VolumeMount{Name: "cache", GuestPath: "/cache"}
	mro := Mount{HostPath: "/srv/data", GuestPath: "/data", ReadOnly: true, Origin: OriginManifest}
	mrw := Mount{HostPath: "/srv/data", GuestPath: "/data", Origin: OriginManifest}
	mvol := VolumeMount{Name: "cache", GuestPath: "/cache", Origin: OriginManifest}
	sec := SecretRef{Name: "openai", Target: "env:OPENAI_API_KEY"}
	msec := SecretRef{Name: "openai", Target: "env:OPENAI_API_KEY", Origin: OriginManifest}
	cases := []struct {
		name string
		prof Profile
		req  Request
		rule string // "" = admitted
	}{
		{"restrictive refuses host dirs", Restrictive, Request{Mounts: []Mount{ro}}, RuleMountForbidden},
		{"restrictive refuses volumes", Restrictive, Request{Volumes: []VolumeMount{vol}}, RuleVolumeForbidden},
		{"restrictive refuses secrets", Restrictive, Request{Secrets: []SecretRef{sec}}, RuleSecretForbidden},
		{"standard allows ro", Standard, Request{Mounts: []Mount{ro}}, ""},
		{"standard refuses rw", Standard, Request{Mounts: []Mount{rw}}, RuleMountReadWrite},
		{"standard rw with --allow-rw-mount", Standard, Request{Mounts: []Mount{rw}, AllowRWMount: true}, ""},
		{"restrictive stays closed with --allow-rw-mount", Restrictive, Request{Mounts: []Mount{rw}, AllowRWMount: true}, RuleMountForbidden},
		{"dev refuses rw without --allow-rw-mount", Dev, Request{Mounts: []Mount{rw}}, RuleMountReadWrite},
		{"dev rw with --allow-rw-mount", Dev, Request{Mounts: []Mount{rw}, AllowRWMount: true}, ""},
		{"dev allows ro", Dev, Request{Mounts: []Mount{ro}}, ""},
		{"manifest mount without consent", Standard, Request{Mounts: []Mount{mro}}, RuleMountNotGranted},
		{"manifest volume without consent", Standard, Request{Volumes: []VolumeMount{mvol}}, RuleMountNotGranted},
		{"manifest mount with consent", Standard, Request{Mounts: []Mount{mro}, Volumes: []VolumeMount{mvol}, AllowManifestMounts: true}, ""},
		{"consent does not make rw admissible", Dev, Request{Mounts: []Mount{mrw}, AllowManifestMounts: true}, RuleMountReadWrite},
		{"manifest rw with consent and --allow-rw-mount", Standard, Request{Mounts: []Mount{mrw}, AllowManifestMounts: true, AllowRWMount: true}, ""},
		{"restrictive refuses a granted manifest mount", Restrictive, Request{Mounts: []Mount{mro}, AllowManifestMounts: true}, RuleMountForbidden},
		{"manifest secret without consent", Standard, Request{Secrets: []SecretRef{msec}}, RuleSecretNotGranted},
		{"manifest secret with consent", Standard, Request{Secrets: []SecretRef{msec}, AllowManifestSecrets: true}, ""},
		{"mount consent is not secret consent", Standard, Request{Secrets: []SecretRef{msec}, AllowManifestMounts: true}, RuleSecretNotGranted},
		{"permissive rw with ack", Permissive, Request{Mounts: []Mount{rw}, AckPermissive: true}, ""},
		{"permissive needs ack", Permissive, Request{Mounts: []Mount{rw}}, RulePermissiveAck},
		{"standard volume and secret", Standard, Request{Volumes: []VolumeMount{vol}, Secrets: []SecretRef{sec}}, ""},
		{"guest path twice", Standard, Request{Mounts: []Mount{ro}, Volumes: []VolumeMount{{Name: "v", GuestPath: "/data"}}}, RuleMountPath},
		{"bad secret target", Standard, Request{Secrets: []SecretRef{{Name: "x", Target: "file:/etc/passwd"}}}, RuleSecretInvalid},
		{"relative volume path", Standard, Request{Volumes: []VolumeMount{{Name: "v", GuestPath: "data"}}}, RuleMountPath},
	}
	for _, c := range cases {
		err := c.prof.Validate(c.req)
		var pd *PolicyDenied
		switch {
		case c.rule == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.rule != "" && (!errors.As(err, &pd) || pd.Rule != c.rule):
			t.Errorf("%s: got %v, want rule %s", c.name, err, c.rule)
		}
	}
}
