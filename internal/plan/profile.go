package plan

import (
	"fmt"
	"net"
	"os"
	"path"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// Profile is a run profile: how much of the host an invocation may reach.
type Profile string

// Run profiles, from least to most capable.
const (
	// Restrictive: no env from the caller, no host directories, no
	// network, no console. For generated or untrusted code.
	Restrictive Profile = "restrictive"
	// Standard (default): env allowed, read-only host directories (read-
	// write ones with AllowRWMount), no network unless an allowlist is
	// given, no console.
	Standard Profile = "standard"
	// Dev: standard plus a console and published ports on any address.
	// Read-write host directories still need AllowRWMount: a guest that
	// can write a host directory can plant what the host later runs
	// (docs/decisions.md).
	Dev Profile = "dev"
	// Permissive: anything, including unrestricted network and read-write
	// host directories; refused unless MVM_ACK_PERMISSIVE_RUN=1.
	Permissive Profile = "permissive"
)

// DefaultProfile is used when none is requested.
const DefaultProfile = Standard

// AckPermissiveEnv must be "1" for the permissive profile to be admitted.
const AckPermissiveEnv = "MVM_ACK_PERMISSIVE_RUN"

// Profiles lists the profiles in order.
var Profiles = []Profile{Restrictive, Standard, Dev, Permissive}

// ParseProfile parses a profile name; "" means DefaultProfile.
func ParseProfile(s string) (Profile, error) {
	if s == "" {
		return DefaultProfile, nil
	}
	for _, p := range Profiles {
		if string(p) == s {
			return p, nil
		}
	}
	return "", &PolicyDenied{Profile: Profile(s), Rule: RuleUnknownProfile,
		Detail: fmt.Sprintf("unknown profile %q (want restrictive, standard, dev or permissive)", s)}
}

func (p Profile) String() string { return string(p) }

// NetMode is the kind of network access requested.
type NetMode string

// Network modes.
const (
	NetNone         NetMode = "none"         // no NIC
	NetAllowlist    NetMode = "allowlist"    // egress only to Allow
	NetUnrestricted NetMode = "unrestricted" // any egress
)

// Network is a network request or policy.
type Network struct {
	Mode  NetMode  `json:"mode"`
	Allow []string `json:"allow"`
	// AllowPrivate: allowed names may resolve to private, CGNAT and ULA
	// addresses (the operator's --allow-private; docs/network.md).
	AllowPrivate bool `json:"allow_private,omitempty"`
	// Publish lists the guest ports bound on the host at boot (-p).
	Publish []Port `json:"publish"`
}

// Port is a published port: HostAddr:HostPort on the host reaches
// GuestPort in the guest. HostAddr is an IPv4 literal.
type Port struct {
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
}

// CheckPublish checks one published port against the profile: the same
// rule at boot (every port in the plan) and for a port forwarded later on
// a running sandbox.
func (p Profile) CheckPublish(port Port) error {
	c, ok := profileCaps[p]
	if !ok {
		return &PolicyDenied{Profile: p, Rule: RuleUnknownProfile, Detail: fmt.Sprintf("unknown profile %q", string(p))}
	}
	deny := func(rule, format string, a ...any) error {
		return &PolicyDenied{Profile: p, Rule: rule, Detail: fmt.Sprintf(format, a...)}
	}
	ip := net.ParseIP(port.HostAddr)
	if ip == nil || ip.To4() == nil || port.HostPort < 0 || port.HostPort > 65535 || port.GuestPort < 1 || port.GuestPort > 65535 {
		return deny(RulePublishInvalid, "published port %s:%d->%d is not an IPv4 address and ports", port.HostAddr, port.HostPort, port.GuestPort)
	}
	if !c.publishLoopback {
		return deny(RulePublishForbidden, "published ports are not allowed")
	}
	if !ip.IsLoopback() && !c.publishAny {
		return deny(RulePublishNonLoopback, "port %d is bound on %s; only loopback (127.0.0.1) binds are allowed", port.HostPort, port.HostAddr)
	}
	return nil
}

// AllowsConsole reports whether the profile allows console access.
func (p Profile) AllowsConsole() bool { return profileCaps[p].console }

// Mount is a host directory shared into the guest.
type Mount struct {
	HostPath  string `json:"host_path"`
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only"`
	// Origin is OriginManifest for a mount an image manifest asked for
	// ("" is the operator's).
	Origin string `json:"origin,omitempty"`
}

// VolumeMount is a named mvm volume attached to the guest.
type VolumeMount struct {
	Name      string `json:"name"`
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only"`
	Origin    string `json:"origin,omitempty"`
}

// OriginManifest marks a mount asked for by an image manifest's [[mount]]
// (volume.OriginManifest): admitted only with AllowManifestMounts.
const OriginManifest = "manifest"

// SecretRef is a secret handed to the guest: its name and where it goes
// ("env:VAR" or "file:/run/secrets/NAME"), never its value.
type SecretRef struct {
	Name   string `json:"name"`
	Target string `json:"target"`
	// Origin is OriginManifest for a secret an image manifest asked for.
	Origin string `json:"origin,omitempty"`
}

// Request is what an invocation asks of a profile.
type Request struct {
	EnvKeys []string // names of caller-provided env variables (values are not needed)
	Mounts  []Mount
	// AllowRWMount (--allow-rw-mount) admits read-write host directories
	// under a profile that allows read-only ones (standard, dev).
	AllowRWMount bool
	// AllowManifestMounts (--allow-manifest-mounts) admits the mounts an
	// image manifest asked for (Origin OriginManifest).
	AllowManifestMounts bool
	// AllowManifestSecrets (--allow-manifest-secrets) admits the secrets an
	// image manifest asked for (Origin OriginManifest).
	AllowManifestSecrets bool
	Volumes              []VolumeMount
	Secrets              []SecretRef
	Network              Network
	Console              bool
	// AckPermissive reports that MVM_ACK_PERMISSIVE_RUN=1 was set (see
	// PermissiveAcknowledged).
	AckPermissive bool
}

// Policy rules, named in PolicyDenied.Rule.
const (
	RuleUnknownProfile     = "profile.unknown"
	RulePermissiveAck      = "profile.permissive_ack_required"
	RuleEnvKeySyntax       = "env.key_syntax"
	RuleEnvDuplicate       = "env.key_duplicate"
	RuleEnvForbidden       = "env.forbidden"
	RuleMountForbidden     = "mount.forbidden"
	RuleMountReadWrite     = "mount.read_write_forbidden"
	RuleMountPath          = "mount.path_invalid"
	RuleMountLimit         = "mount.limit"
	RuleMountNotGranted    = "mount.manifest_not_granted"
	RuleNetForbidden       = "net.forbidden"
	RuleNetUnrestricted    = "net.unrestricted_forbidden"
	RuleNetMode            = "net.mode_invalid"
	RuleNetAllowlist       = "net.allowlist_invalid"
	RuleConsoleForbidden   = "console.forbidden"
	RulePublishForbidden   = "net.publish_forbidden"
	RulePublishNonLoopback = "net.publish_non_loopback"
	RulePublishInvalid     = "net.publish_invalid"
	maxPublish             = 64
	maxMounts              = 16
	maxAllow               = 64
	maxEnvKeys             = 256
	maxEnvKeyLen           = 128
	permissiveAckRequired  = "1"
	RuleVolumeForbidden    = "volume.forbidden"
	RuleSecretForbidden    = "secret.forbidden"
	RuleSecretInvalid      = "secret.invalid"
	RuleSecretNotGranted   = "secret.manifest_not_granted"
	maxSecrets             = 64
)

// PolicyDenied is returned when a request breaks a rule of its profile.
type PolicyDenied struct {
	Profile Profile
	Rule    string
	Detail  string
}

func (e *PolicyDenied) Error() string {
	return fmt.Sprintf("policy denied by profile %q: rule %s: %s", e.Profile, e.Rule, e.Detail)
}

// EnvKeyPattern is the syntax of an environment variable name.
var EnvKeyPattern = lazyre.New(`^[A-Za-z_][A-Za-z0-9_]*$`)

// PermissiveAcknowledged reports whether MVM_ACK_PERMISSIVE_RUN=1 is set in
// the environment seen through lookup (os.LookupEnv when nil).
func PermissiveAcknowledged(lookup func(string) (string, bool)) bool {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	v, ok := lookup(AckPermissiveEnv)
	return ok && v == permissiveAckRequired
}

type caps struct {
	env, roDirs, rwDirs, allowlist, unrestricted, console, needsAck bool
	// publishLoopback allows published ports bound on loopback;
	// publishAny also on other addresses (0.0.0.0, a LAN address).
	publishLoopback, publishAny bool
}

var profileCaps = map[Profile]caps{
	Restrictive: {},
	Standard:    {env: true, roDirs: true, allowlist: true, publishLoopback: true},
	Dev:         {env: true, roDirs: true, allowlist: true, console: true, publishLoopback: true, publishAny: true},
	Permissive:  {env: true, roDirs: true, rwDirs: true, allowlist: true, unrestricted: true, console: true, needsAck: true, publishLoopback: true, publishAny: true},
}

// Validate checks req against profile p and returns a *PolicyDenied naming
// the first rule broken, or nil.
func (p Profile) Validate(req Request) error {
	c, ok := profileCaps[p]
	if !ok {
		return &PolicyDenied{Profile: p, Rule: RuleUnknownProfile, Detail: fmt.Sprintf("unknown profile %q", string(p))}
	}
	deny := func(rule, format string, a ...any) error {
		return &PolicyDenied{Profile: p, Rule: rule, Detail: fmt.Sprintf(format, a...)}
	}
	if c.needsAck && !req.AckPermissive {
		return deny(RulePermissiveAck, "the permissive profile allows unrestricted network and read-write host directories; set %s=1 to acknowledge", AckPermissiveEnv)
	}

	// Env: names only; values never reach the policy or the evidence.
	if len(req.EnvKeys) > maxEnvKeys {
		return deny(RuleEnvKeySyntax, "%d env variables exceed the limit of %d", len(req.EnvKeys), maxEnvKeys)
	}
	seen := map[string]bool{}
	for i, k := range req.EnvKeys {
		if len(k) > maxEnvKeyLen || !EnvKeyPattern.MatchString(k) {
			return deny(RuleEnvKeySyntax, "env key #%d is not a valid name (want [A-Za-z_][A-Za-z0-9_]*, at most %d bytes)", i+1, maxEnvKeyLen)
		}
		if seen[k] {
			return deny(RuleEnvDuplicate, "env key %s given twice", k)
		}
		seen[k] = true
	}
	if len(req.EnvKeys) > 0 && !c.env {
		return deny(RuleEnvForbidden, "env variables from the caller are not allowed (%d given)", len(req.EnvKeys))
	}

	// Host directories.
	if len(req.Mounts) > maxMounts {
		return deny(RuleMountLimit, "%d host directories exceed the limit of %d", len(req.Mounts), maxMounts)
	}
	for i, m := range req.Mounts {
		if !isCleanAbs(m.HostPath) {
			return deny(RuleMountPath, "mount #%d: host path must be absolute and clean", i+1)
		}
		if !isCleanAbs(m.GuestPath) || m.GuestPath == "/" {
			return deny(RuleMountPath, "mount #%d: guest path must be absolute, clean and not /", i+1)
		}
		if !c.roDirs {
			return deny(RuleMountForbidden, "host directories are not allowed (%d given)", len(req.Mounts))
		}
		if m.Origin == OriginManifest && !req.AllowManifestMounts {
			return deny(RuleMountNotGranted, "mount #%d was asked for by the image's manifest and not granted (--allow-manifest-mounts)", i+1)
		}
		if !m.ReadOnly && !c.rwDirs && !req.AllowRWMount {
			return deny(RuleMountReadWrite, "mount #%d is read-write; a read-write host directory needs --allow-rw-mount (or the permissive profile with %s=1); or add :ro", i+1, AckPermissiveEnv)
		}
	}
	if len(req.Mounts)+len(req.Volumes) > maxMounts {
		return deny(RuleMountLimit, "%d host directories and volumes exceed the limit of %d", len(req.Mounts)+len(req.Volumes), maxMounts)
	}
	guestPaths := map[string]bool{}
	for _, m := range req.Mounts {
		guestPaths[m.GuestPath] = true
	}
	for i, v := range req.Volumes {
		if !isCleanAbs(v.GuestPath) || v.GuestPath == "/" {
			return deny(RuleMountPath, "volume #%d: guest path must be absolute, clean and not /", i+1)
		}
		if !c.roDirs {
			return deny(RuleVolumeForbidden, "volumes are not allowed (%d given)", len(req.Volumes))
		}
		if v.Origin == OriginManifest && !req.AllowManifestMounts {
			return deny(RuleMountNotGranted, "volume #%d was asked for by the image's manifest and not granted (--allow-manifest-mounts)", i+1)
		}
		if guestPaths[v.GuestPath] {
			return deny(RuleMountPath, "volume #%d: guest path %s is used twice", i+1, v.GuestPath)
		}
		guestPaths[v.GuestPath] = true
	}
	if len(guestPaths) != len(req.Mounts)+len(req.Volumes) {
		return deny(RuleMountPath, "two host directories share a guest path")
	}

	// Secrets: names and targets only.
	if len(req.Secrets) > maxSecrets {
		return deny(RuleSecretInvalid, "%d secrets exceed the limit of %d", len(req.Secrets), maxSecrets)
	}
	for i, sr := range req.Secrets {
		if sr.Name == "" || len(sr.Name) > 64 || !(strings.HasPrefix(sr.Target, "env:") || strings.HasPrefix(sr.Target, "file:/run/secrets/")) {
			return deny(RuleSecretInvalid, "secret #%d: want a name and an env:VAR or file:/run/secrets/NAME target", i+1)
		}
		if !c.env {
			return deny(RuleSecretForbidden, "secrets are not allowed (%d given)", len(req.Secrets))
		}
		if sr.Origin == OriginManifest && !req.AllowManifestSecrets {
			return deny(RuleSecretNotGranted, "secret #%d was asked for by the image's manifest and not granted (--allow-manifest-secrets)", i+1)
		}
	}

	// Network.
	switch req.Network.Mode {
	case "", NetNone:
		if len(req.Network.Allow) > 0 {
			return deny(RuleNetMode, "network mode none with an allowlist")
		}
	case NetAllowlist:
		if !c.allowlist {
			return deny(RuleNetForbidden, "network access is not allowed")
		}
		if len(req.Network.Allow) == 0 {
			return deny(RuleNetAllowlist, "allowlist mode needs at least one destination")
		}
		if len(req.Network.Allow) > maxAllow {
			return deny(RuleNetAllowlist, "%d allowlist entries exceed the limit of %d", len(req.Network.Allow), maxAllow)
		}
		for i, a := range req.Network.Allow {
			if !validDestination(a) {
				return deny(RuleNetAllowlist, "allowlist entry #%d is not a host name, *.domain, IP or CIDR (optionally :port)", i+1)
			}
		}
	case NetUnrestricted:
		if !c.allowlist {
			return deny(RuleNetForbidden, "network access is not allowed")
		}
		if !c.unrestricted {
			return deny(RuleNetUnrestricted, "unrestricted network is not allowed; give an allowlist instead")
		}
	default:
		return deny(RuleNetMode, "unknown network mode %q", string(req.Network.Mode))
	}

	if len(req.Network.Publish) > maxPublish {
		return deny(RulePublishInvalid, "%d published ports exceed the limit of %d", len(req.Network.Publish), maxPublish)
	}
	for _, port := range req.Network.Publish {
		if err := p.CheckPublish(port); err != nil {
			return err
		}
	}

	if req.Console && !c.console {
		return deny(RuleConsoleForbidden, "console access is not allowed")
	}
	return nil
}

func isCleanAbs(p string) bool {
	return p != "" && path.IsAbs(p) && path.Clean(p) == p && !strings.ContainsAny(p, "\x00\n") && len(p) <= 4096
}

var hostRe = lazyre.New(`^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func validDestination(s string) bool {
	if len(s) == 0 || len(s) > 260 {
		return false
	}
	host := strings.ToLower(s)
	if h, port, err := net.SplitHostPort(host); err == nil {
		if !validPort(port) {
			return false
		}
		host = h
	}
	if _, _, err := net.ParseCIDR(host); err == nil {
		return true
	}
	if net.ParseIP(host) != nil {
		return true
	}
	return len(host) <= 253 && hostRe.MatchString(host)
}

func validPort(p string) bool {
	if len(p) == 0 || len(p) > 5 {
		return false
	}
	n := 0
	for _, c := range p {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n >= 1 && n <= 65535
}
