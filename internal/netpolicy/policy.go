// Package netpolicy is mvm's network policy: what a sandbox may reach and
// how the host enforces it.
//
// A sandbox has no network device unless its plan allows network. With an
// allowlist, the guest gets one NIC on QEMU user networking with
// restrict=on: the guest can reach nothing but the forwards mvm installs.
// Each allowed name gets a synthetic guest address (10.0.2.101, .102, ...);
// a guest forward per (address, port) hands every connection to the
// sandbox's supervisor, whose egress proxy checks the TLS SNI or HTTP Host
// against the name, resolves the name on the host and connects. DNS in the
// guest is answered by mvm, only for allowed names, with their synthetic
// addresses. Every decision is an audit event with names, ports and
// decisions only, never payload bytes.
package netpolicy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/atomicfile"
	"github.com/mvm-sandbox/mvm/internal/guestnet"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// Mode is the kind of network a sandbox has.
type Mode string

// Network modes.
const (
	// None: no network device at all (the default). Published ports (-p)
	// still give the guest a NIC, with no egress.
	None Mode = "none"
	// Allowlist: egress only to the named destinations, through the proxy.
	Allowlist Mode = "allowlist"
	// Unrestricted: QEMU user networking without restrictions. Needs
	// MVM_ACK_UNRESTRICTED_NETWORK=1.
	Unrestricted Mode = "unrestricted"
)

// Environment variables.
const (
	// AckUnrestrictedEnv must be "1" for --network unrestricted.
	AckUnrestrictedEnv = "MVM_ACK_UNRESTRICTED_NETWORK"
	// HostsEnv names a hosts-format file the host-side resolver reads
	// before DNS. A test and development hook: it stands in for the
	// internet, so its answers may be loopback addresses.
	HostsEnv = "MVM_NET_HOSTS"
)

// DefaultPort is the port of an --allow entry without one.
const DefaultPort = 443

// HostAlias is the one name that reaches the host's own loopback
// (127.0.0.1) when allowed explicitly, e.g. --allow host.mvm.internal:8080.
const HostAlias = "host.mvm.internal"

// Limits of a network config.
const (
	MaxRules     = 64
	maxNames     = guestnet.LastSynthetic - guestnet.FirstSynthetic + 1
	maxPublished = 64
)

// Origin says who asked for a network entry. The operator's command line
// is trusted; everything else is a request that may not reach the host's
// loopback (HostAlias) or widen the private-address policy.
type Origin string

// Origins.
const (
	// OriginCLI: the operator's command-line flags (and the SDKs, which
	// drive the CLI). The only origin that may allow HostAlias or set
	// AllowPrivate.
	OriginCLI Origin = "cli"
	// OriginManifest: an image's mvm.toml. Applied only with the
	// operator's consent, shown before boot, never HostAlias.
	OriginManifest Origin = "manifest"
	// OriginMCP: an MCP client (a model). Never HostAlias, never private.
	OriginMCP Origin = "mcp"
)

// ErrRefused marks a network request refused by policy (as opposed to a
// malformed one).
var ErrRefused = errors.New("refused by network policy")

// Rule allows TCP connections to Host:Port.
type Rule struct {
	Host string `json:"host"`
	Port int    `json:"port"`
	// Origin is who asked for this entry; "" means the Config's Origin.
	Origin Origin `json:"origin,omitempty"`
}

func (r Rule) String() string { return net.JoinHostPort(r.Host, strconv.Itoa(r.Port)) }

// Publish binds a host address and port to a guest port (-p).
type Publish struct {
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
}

func (p Publish) String() string {
	return net.JoinHostPort(p.HostAddr, strconv.Itoa(p.HostPort)) + "->" + strconv.Itoa(p.GuestPort) + "/tcp"
}

// Config is a sandbox's network, as admitted. It is written to the
// sandbox directory (ConfigFile) for the supervisor.
type Config struct {
	Mode    Mode      `json:"mode"`
	Allow   []Rule    `json:"allow,omitempty"`
	Publish []Publish `json:"publish,omitempty"`
	// Presets names the presets the allowlist was built from (for display).
	Presets []string `json:"presets,omitempty"`
	// Origin is who built this config: OriginCLI for the operator's flags,
	// OriginMCP for an MCP client. "" is treated as untrusted, like MCP.
	Origin Origin `json:"origin,omitempty"`
	// AllowPrivate lets allowed names resolve to private (RFC 1918),
	// CGNAT (100.64/10) and ULA (fc00::/7) addresses. Only the operator
	// (OriginCLI, --allow-private) may set it; it is recorded in the plan.
	AllowPrivate bool `json:"allow_private,omitempty"`
}

// RuleOrigin is the origin of r in c.
func (c Config) RuleOrigin(r Rule) Origin {
	if r.Origin != "" {
		return r.Origin
	}
	return c.Origin
}

// Files in the sandbox directory.
const (
	ConfigFile   = "network.json"
	PortsFile    = "ports.json"
	EgressSocket = "egress.sock"
)

// Presets are named allowlists. Every entry is HOST:PORT.
var Presets = map[string][]string{
	// Package registries and mirrors: Debian, PyPI, npm, crates.io, Go.
	// HTTPS only: plain HTTP to a CDN front end is a way to any site it
	// serves (docs/network.md).
	"registries": {
		"deb.debian.org:443", "security.debian.org:443",
		"pypi.org:443", "files.pythonhosted.org:443",
		"registry.npmjs.org:443",
		"crates.io:443", "static.crates.io:443", "index.crates.io:443",
		"proxy.golang.org:443", "sum.golang.org:443",
	},
	// AI model APIs and GitHub over HTTPS, no registries.
	"agent": {
		"api.anthropic.com:443", "api.openai.com:443",
		"github.com:443", "api.github.com:443", "codeload.github.com:443",
		"objects.githubusercontent.com:443", "raw.githubusercontent.com:443",
	},
}

func init() {
	// dev = registries + agent.
	dev := append(append([]string(nil), Presets["registries"]...), Presets["agent"]...)
	Presets["dev"] = dev
}

// PresetNames lists the presets, sorted.
func PresetNames() []string {
	names := make([]string, 0, len(Presets))
	for n := range Presets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

var labelRE = lazyre.New(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// CanonicalName lowercases name, drops one trailing dot and checks that it
// is a DNS host name. It rejects IP literals and wildcards.
func CanonicalName(name string) (string, error) {
	n := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
	if n == "" {
		return "", errors.New("empty host name")
	}
	if len(n) > 253 {
		return "", fmt.Errorf("host name too long (%d bytes)", len(n))
	}
	if strings.HasPrefix(n, "*.") {
		return "", fmt.Errorf("%q: wildcards are not supported; list each name", name)
	}
	if _, err := netip.ParseAddr(strings.Trim(n, "[]")); err == nil {
		return "", fmt.Errorf("%q: IP addresses cannot be allowed, only names (connections go to addresses resolved for an allowed name); use %s for the host's loopback", name, HostAlias)
	}
	labels := strings.Split(n, ".")
	for _, l := range labels {
		if !labelRE.MatchString(l) {
			return "", fmt.Errorf("%q is not a valid host name", name)
		}
	}
	if _, err := strconv.Atoi(labels[len(labels)-1]); err == nil {
		return "", fmt.Errorf("%q is not a valid host name (numeric top-level label)", name)
	}
	return n, nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 || len(s) > 5 {
		return 0, fmt.Errorf("invalid port %q (want 1-65535)", s)
	}
	return n, nil
}

// ParseAllow parses one allowlist entry (an --allow value, a manifest's
// allow item, an MCP allow item): HOST or HOST:PORT (the port defaults to
// 443). Its errors name the entry, not a flag: MCP shows them to models.
func ParseAllow(s string) (Rule, error) {
	s = strings.TrimSpace(s)
	host, port := s, ""
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, port = s[:i], s[i+1:]
		if strings.Contains(host, ":") {
			return Rule{}, fmt.Errorf("allow entry %q: IP addresses cannot be allowed, only names", s)
		}
	}
	name, err := CanonicalName(host)
	if err != nil {
		return Rule{}, fmt.Errorf("allow entry %q: %v", s, err)
	}
	p := DefaultPort
	if port != "" {
		if p, err = parsePort(port); err != nil {
			return Rule{}, fmt.Errorf("allow entry %q: %v", s, err)
		}
	}
	return Rule{Host: name, Port: p}, nil
}

// ParsePublish parses one -p value: [ADDR:]HOSTPORT:GUESTPORT. The
// address defaults to 127.0.0.1.
func ParsePublish(s string) (Publish, error) {
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(s, "/tcp")
	var addr, hp, gp string
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]:")
		if end < 0 {
			return Publish{}, fmt.Errorf("-p %q: want [ADDR:]HOSTPORT:GUESTPORT", s)
		}
		addr = s[1:end]
		rest := strings.Split(s[end+2:], ":")
		if len(rest) != 2 {
			return Publish{}, fmt.Errorf("-p %q: want [ADDR:]HOSTPORT:GUESTPORT", s)
		}
		hp, gp = rest[0], rest[1]
	} else {
		parts := strings.Split(s, ":")
		switch len(parts) {
		case 2:
			addr, hp, gp = "127.0.0.1", parts[0], parts[1]
		case 3:
			addr, hp, gp = parts[0], parts[1], parts[2]
		default:
			return Publish{}, fmt.Errorf("-p %q: want [ADDR:]HOSTPORT:GUESTPORT (e.g. 8080:80 or 127.0.0.1:8080:80)", s)
		}
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil || !ip.Is4() {
		return Publish{}, fmt.Errorf("-p %q: %q is not an IPv4 address to bind", s, addr)
	}
	h, err := parsePort(hp)
	if err != nil {
		return Publish{}, fmt.Errorf("-p %q: host %v", s, err)
	}
	g, err := parsePort(gp)
	if err != nil {
		return Publish{}, fmt.Errorf("-p %q: guest %v", s, err)
	}
	return Publish{HostAddr: ip.String(), HostPort: h, GuestPort: g}, nil
}

// ParseForward parses a `forward -p` value: like ParsePublish, and also
// GUESTPORT alone or a host port of 0, meaning "pick a free host port"
// (HostPort is then 0 and the supervisor chooses).
func ParseForward(s string) (Publish, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "/tcp")
	if !strings.Contains(t, ":") {
		t = "0:" + t
	}
	parts := strings.Split(t, ":")
	if len(parts) >= 2 && parts[len(parts)-2] == "0" {
		parts[len(parts)-2] = "1"
		p, err := ParsePublish(strings.Join(parts, ":"))
		if err != nil {
			return Publish{}, fmt.Errorf("-p %q: want [ADDR:][HOSTPORT:]GUESTPORT", s)
		}
		p.HostPort = 0
		return p, nil
	}
	return ParsePublish(s)
}

// Request is what a caller asked for: the command line (or an SDK), a
// manifest, or an MCP client (Origin).
type Request struct {
	Network string   // "", "none", "unrestricted" or a preset name
	Allow   []string // --allow values
	Publish []string // -p values
	// Origin is who asks; see Config.Origin.
	Origin Origin
	// AllowPrivate is --allow-private (OriginCLI only).
	AllowPrivate bool
}

// Build turns a request into a Config. lookupEnv reads the acknowledgement
// variable (os.LookupEnv when nil). warning is non-empty when the caller
// must be warned (unrestricted network).
func Build(req Request, lookupEnv func(string) (string, bool)) (cfg Config, warning string, err error) {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	cfg.Mode = None
	var rules []Rule
	switch n := strings.ToLower(strings.TrimSpace(req.Network)); n {
	case "", "none":
		if n == "none" && len(req.Allow) > 0 {
			return Config{}, "", errors.New("--network none cannot be combined with --allow")
		}
	case string(Allowlist):
		if len(req.Allow) == 0 {
			return Config{}, "", errors.New("--network allowlist needs at least one --allow")
		}
	case string(Unrestricted):
		if len(req.Allow) > 0 {
			return Config{}, "", errors.New("--network unrestricted cannot be combined with --allow (it allows everything)")
		}
		if v, ok := lookupEnv(AckUnrestrictedEnv); !ok || v != "1" {
			return Config{}, "", fmt.Errorf("--network unrestricted lets the guest reach any address, including services on the host's loopback; set %s=1 to acknowledge", AckUnrestrictedEnv)
		}
		cfg.Mode = Unrestricted
		warning = "warning: unrestricted network: the guest can reach the internet, your LAN and services on this host's loopback, and nothing is audited per connection"
	default:
		entries, ok := Presets[n]
		if !ok {
			return Config{}, "", fmt.Errorf("unknown --network %q (want none, unrestricted or a preset: %s)", req.Network, strings.Join(PresetNames(), ", "))
		}
		for _, e := range entries {
			r, err := ParseAllow(e)
			if err != nil {
				return Config{}, "", err
			}
			rules = append(rules, r)
		}
		cfg.Presets = []string{n}
	}
	for _, a := range req.Allow {
		r, err := ParseAllow(a)
		if err != nil {
			return Config{}, "", err
		}
		rules = append(rules, r)
	}
	if len(rules) > 0 {
		cfg.Mode = Allowlist
		cfg.Allow = dedupe(rules)
	}
	cfg.Origin = req.Origin
	if req.AllowPrivate {
		if cfg.Mode != Allowlist {
			return Config{}, "", errors.New("--allow-private needs an allowlist (--allow or a --network preset)")
		}
		cfg.AllowPrivate = true
	}
	seen := map[int]bool{}
	for _, p := range req.Publish {
		pub, err := ParsePublish(p)
		if err != nil {
			return Config{}, "", err
		}
		if seen[pub.HostPort] {
			return Config{}, "", fmt.Errorf("-p: host port %d given twice", pub.HostPort)
		}
		seen[pub.HostPort] = true
		cfg.Publish = append(cfg.Publish, pub)
	}
	return cfg, warning, cfg.Validate()
}

// dedupe sorts rules and drops repeated HOST:PORT entries, keeping the
// most trusted origin of each (an entry without one, or OriginCLI).
func dedupe(rules []Rule) []Rule {
	at := map[string]int{}
	var out []Rule
	for _, r := range rules {
		k := r.String()
		i, seen := at[k]
		if !seen {
			at[k] = len(out)
			out = append(out, r)
			continue
		}
		if r.Origin == "" || r.Origin == OriginCLI {
			out[i].Origin = r.Origin
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Host != out[j].Host {
			return out[i].Host < out[j].Host
		}
		return out[i].Port < out[j].Port
	})
	return out
}

// WithRules returns c with rules added (an allowlist, deduplicated).
func (c Config) WithRules(rules ...Rule) Config {
	if len(rules) == 0 {
		return c
	}
	c.Mode = Allowlist
	c.Allow = dedupe(append(append([]Rule(nil), c.Allow...), rules...))
	return c
}

// Validate checks a Config read from disk or built by Build.
func (c Config) Validate() error {
	switch c.Mode {
	case "", None, Unrestricted:
		if len(c.Allow) > 0 {
			return fmt.Errorf("network mode %s with an allowlist", c.Mode)
		}
	case Allowlist:
		if len(c.Allow) == 0 {
			return errors.New("allowlist mode with no destinations")
		}
	default:
		return fmt.Errorf("unknown network mode %q", c.Mode)
	}
	if len(c.Allow) > MaxRules {
		return fmt.Errorf("%d allowlist entries exceed the limit of %d", len(c.Allow), MaxRules)
	}
	if !validOrigin(c.Origin) {
		return fmt.Errorf("unknown network request origin %q", c.Origin)
	}
	for _, r := range c.Allow {
		if n, err := CanonicalName(r.Host); err != nil || n != r.Host || r.Port < 1 || r.Port > 65535 {
			return fmt.Errorf("invalid allowlist entry %s", r)
		}
		o := c.RuleOrigin(r)
		if !validOrigin(r.Origin) {
			return fmt.Errorf("allowlist entry %s: unknown origin %q", r, r.Origin)
		}
		if r.Host == HostAlias && o != OriginCLI {
			return fmt.Errorf("%w: %s is the host's own loopback; only the operator can allow it, on the command line (asked for by %s)", ErrRefused, r, originName(o))
		}
	}
	if c.AllowPrivate {
		if c.Origin != OriginCLI {
			return fmt.Errorf("%w: private network addresses can only be allowed by the operator, on the command line (asked for by %s)", ErrRefused, originName(c.Origin))
		}
		if c.Mode != Allowlist {
			return errors.New("allowing private addresses needs an allowlist")
		}
	}
	if len(c.Names()) > maxNames {
		return fmt.Errorf("%d allowed names exceed the limit of %d", len(c.Names()), maxNames)
	}
	if len(c.Publish) > maxPublished {
		return fmt.Errorf("%d published ports exceed the limit of %d", len(c.Publish), maxPublished)
	}
	return nil
}

func validOrigin(o Origin) bool {
	switch o {
	case "", OriginCLI, OriginManifest, OriginMCP:
		return true
	}
	return false
}

func originName(o Origin) string {
	switch o {
	case OriginCLI:
		return "the command line"
	case OriginManifest:
		return "a manifest (mvm.toml)"
	case OriginMCP:
		return "an MCP client"
	}
	return "an unidentified caller"
}

// HasNIC reports whether the guest gets a network device.
func (c Config) HasNIC() bool {
	return c.Mode == Allowlist || c.Mode == Unrestricted || len(c.Publish) > 0
}

// Names returns the allowed names, sorted and unique.
func (c Config) Names() []string {
	var names []string
	seen := map[string]bool{}
	for _, r := range c.Allow {
		if !seen[r.Host] {
			seen[r.Host] = true
			names = append(names, r.Host)
		}
	}
	sort.Strings(names)
	return names
}

// Strings returns the allowlist as HOST:PORT strings (for the plan).
func (c Config) Strings() []string {
	out := make([]string, 0, len(c.Allow))
	for _, r := range c.Allow {
		out = append(out, r.String())
	}
	return out
}

// GuestAddrs maps each allowed name to its synthetic guest address.
func (c Config) GuestAddrs() map[string]netip.Addr {
	m := map[string]netip.Addr{}
	for i, n := range c.Names() {
		p := guestnet.SyntheticPrefix
		m[n] = netip.AddrFrom4([4]byte{p[0], p[1], p[2], byte(guestnet.FirstSynthetic + i)})
	}
	return m
}

// GuestMode is the mvm.net= kernel argument the agent acts on, or "".
func (c Config) GuestMode() string {
	switch {
	case c.Mode == Allowlist:
		return guestnet.ModeAllowlist
	case c.Mode == Unrestricted:
		return guestnet.ModeUnrestricted
	case len(c.Publish) > 0:
		return guestnet.ModeInbound
	}
	return ""
}

// WriteConfig stores c in dir.
func WriteConfig(dir string, c Config) error {
	return writeJSON(filepath.Join(dir, ConfigFile), c)
}

// ReadConfig loads the Config of the sandbox in dir. A missing file means
// no network.
func ReadConfig(dir string) (Config, error) {
	var c Config
	b, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if errors.Is(err, os.ErrNotExist) {
		return Config{Mode: None}, nil
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w", ConfigFile, err)
	}
	return c, c.Validate()
}

// WritePorts records the sandbox's current port bindings.
func WritePorts(dir string, ports []Publish) error {
	if ports == nil {
		ports = []Publish{}
	}
	return writeJSON(filepath.Join(dir, PortsFile), ports)
}

// ReadPorts returns the sandbox's current port bindings: those the
// supervisor recorded, else those it was started with.
func ReadPorts(dir string) ([]Publish, error) {
	b, err := os.ReadFile(filepath.Join(dir, PortsFile))
	if errors.Is(err, os.ErrNotExist) {
		c, err := ReadConfig(dir)
		return c.Publish, err
	}
	if err != nil {
		return nil, err
	}
	var ports []Publish
	if err := json.Unmarshal(b, &ports); err != nil {
		return nil, fmt.Errorf("%s: %w", PortsFile, err)
	}
	return ports, nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o600)
}
