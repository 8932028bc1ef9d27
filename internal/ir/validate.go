package ir

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
)

// Stable error codes. Every one is documented in docs/workload-ir.md and
// produced by a test.
const (
	EDecode              = "E_DECODE"               // not JSON, duplicate key, unknown field, wrong type, too large
	ESchemaVersion       = "E_SCHEMA_VERSION"       // schema_version other than 1
	EInvalidID           = "E_INVALID_ID"           // name not ^[a-z][a-z0-9-]{0,62}$
	ELanguage            = "E_LANGUAGE"             // language not python or node
	ESource              = "E_SOURCE"               // source kind or glob invalid
	ESourceOutOfTree     = "E_SOURCE_OUT_OF_TREE"   // source path absolute or leaving its directory
	ESourceSymlink       = "E_SOURCE_SYMLINK"       // (build) a symlink in the source points outside the tree
	EImage               = "E_IMAGE"                // image kind unknown, fields of another kind, bad package name
	EImageUnavailable    = "E_IMAGE_UNAVAILABLE"    // (build) no Debian release provides that version / Nix name
	EResources           = "E_RESOURCES"            // cpu/memory/disk out of range
	ENetwork             = "E_NETWORK"              // mode unknown, allow with deny, allow empty, bad entry
	ENetworkWildcard     = "E_NETWORK_WILDCARD"     // "*" or "*.x" allow entries
	ENetworkIPLiteral    = "E_NETWORK_IP_LITERAL"   // allow entries naming an IP address or CIDR
	ENetworkPortsDeny    = "E_NETWORK_PORTS_DENY"   // ports with network mode deny
	EEnv                 = "E_ENV"                  // bad env name, value kind or secret name
	ESecretNotFound      = "E_SECRET_NOT_FOUND"     // (up) a referenced secret does not exist
	ENoEntrypoint        = "E_NO_ENTRYPOINT"        // entrypoints empty
	EDuplicateEntrypoint = "E_DUPLICATE_ENTRYPOINT" // two entrypoints of the same kind and target
	EEntrypoint          = "E_ENTRYPOINT"           // empty command, bad module/function, bad working_dir
	EHook                = "E_HOOK"                 // empty hook argv
	EFile                = "E_FILE"                 // recorded file path/content/mode invalid
)

// Error is one validation problem: a stable code, the JSON path of the
// offending field and what to do instead.
type Error struct {
	Code string `json:"code"`
	Path string `json:"path,omitempty"`
	Msg  string `json:"message"`
}

func (e *Error) Error() string {
	if e.Path == "" {
		return e.Code + ": " + e.Msg
	}
	return fmt.Sprintf("%s: %s: %s", e.Code, e.Path, e.Msg)
}

// Errors is every problem found, in document order.
type Errors []*Error

func (l Errors) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Unwrap lets errors.As find each *Error.
func (l Errors) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// Limits.
const (
	MaxCPUCores  = 16
	MinMemoryMB  = 128
	MaxMemoryMB  = 16384
	MinDiskMB    = 256
	MaxDiskMB    = 1 << 20
	MaxListItems = 256
	MaxStringLen = 4096
	// MaxFileBytes caps one recorded file (decoded).
	MaxFileBytes = 4 << 20
)

var (
	idRe      = lazyre.New(`^[a-z][a-z0-9-]{0,62}$`)
	envKeyRe  = lazyre.New(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	debPkgRe  = lazyre.New(`^[a-z0-9][a-z0-9+.-]{0,99}$`)
	nixNameRe = lazyre.New(`^[A-Za-z_][A-Za-z0-9_.+-]{0,99}$`)
	moduleRe  = lazyre.New(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)
	identRe   = lazyre.New(`^[A-Za-z_$][A-Za-z0-9_$]{0,127}$`)
	secretRe  = lazyre.New(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	versionRe = lazyre.New(`^[0-9]+(\.[0-9]+)?$`)
	tmplRe    = lazyre.New(`^[a-z0-9][a-z0-9.-]{0,62}$`)
)

// Validate checks a normalized workload. It reports every problem found.
// Checks that need the machine (image availability, secrets, symlinks in
// the source) are left to the build; see CheckImage and the build code.
func (w *Workload) Validate() error {
	var errs Errors
	add := func(code, p, format string, a ...any) {
		errs = append(errs, &Error{Code: code, Path: p, Msg: fmt.Sprintf(format, a...)})
	}
	if w.SchemaVersion != SchemaVersion {
		add(ESchemaVersion, "schema_version", "schema_version is %d; this mvm reads version %d", w.SchemaVersion, SchemaVersion)
	}
	if !idRe.MatchString(w.Name) {
		add(EInvalidID, "name", "name %q must match ^[a-z][a-z0-9-]{0,62}$ (lower-case letters, digits and '-', starting with a letter), e.g. \"worker\"", clip(w.Name))
	}
	if w.Language != LangPython && w.Language != LangNode {
		add(ELanguage, "language", "language %q: want \"python\" or \"node\"", clip(w.Language))
	}

	// source
	s := w.Source
	if s.Kind != "local_path" {
		add(ESource, "source.kind", "source kind %q: only \"local_path\" (mvm.local_path(...)) is supported", clip(s.Kind))
	}
	if msg := relPathProblem(s.Path); msg != "" {
		add(ESourceOutOfTree, "source.path", "%s; use a path inside the declaration's directory, e.g. mvm.local_path(\".\")", msg)
	}
	for i, g := range append(append([]string{}, s.Include...), s.Exclude...) {
		field := fmt.Sprintf("source.include[%d]", i)
		if i >= len(s.Include) {
			field = fmt.Sprintf("source.exclude[%d]", i-len(s.Include))
		}
		if msg := globProblem(g); msg != "" {
			add(ESourceOutOfTree, field, "%s", msg)
		}
	}
	if len(s.Include) > MaxListItems || len(s.Exclude) > MaxListItems {
		add(ESource, "source", "at most %d include and %d exclude patterns", MaxListItems, MaxListItems)
	}

	w.validateImage(add)

	r := w.Resources
	if r.CPUCores < 1 || r.CPUCores > MaxCPUCores {
		add(EResources, "resources.cpu_cores", "cpu_cores %d: must be between 1 and %d", r.CPUCores, MaxCPUCores)
	}
	if r.MemoryMB < MinMemoryMB || r.MemoryMB > MaxMemoryMB {
		add(EResources, "resources.memory_mb", "memory_mb %d: must be between %d and %d", r.MemoryMB, MinMemoryMB, MaxMemoryMB)
	}
	if r.DiskMB < MinDiskMB || r.DiskMB > MaxDiskMB {
		add(EResources, "resources.disk_mb", "disk_mb %d: must be between %d and %d", r.DiskMB, MinDiskMB, MaxDiskMB)
	}

	w.validateNetwork(add)

	for _, k := range sortedKeys(w.Env) {
		v := w.Env[k]
		p := "env." + k
		if !envKeyRe.MatchString(k) {
			add(EEnv, p, "environment variable name %q: use letters, digits and '_', not starting with a digit", clip(k))
		}
		switch v.Kind {
		case "literal":
			if v.Name != "" || strings.ContainsRune(v.Value, 0) || len(v.Value) > MaxStringLen {
				add(EEnv, p, "a literal holds only value (no NUL, at most %d bytes)", MaxStringLen)
			}
		case "secret":
			if v.Value != "" {
				add(EEnv, p, "a secret reference holds its name only, never a value")
			}
			if !secretRe.MatchString(v.Name) {
				add(EEnv, p, "secret name %q must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", clip(v.Name))
			}
		default:
			add(EEnv, p, "env value kind %q: want \"literal\" (a string) or \"secret\" (mvm.secret(NAME))", clip(v.Kind))
		}
	}

	if len(w.Entrypoints) == 0 {
		add(ENoEntrypoint, "entrypoints", "no entrypoint: declare mvm.entrypoint(command=[...]) or mvm.entrypoint_function(module, function) (the decorated function is the default)")
	}
	seen := map[string]int{}
	for i, e := range w.Entrypoints {
		p := fmt.Sprintf("entrypoints[%d]", i)
		var key string
		switch e.Kind {
		case EntryCommand:
			if len(e.Command) == 0 || e.Command[0] == "" {
				add(EEntrypoint, p+".command", "empty command: give an argv such as [\"python\", \"main.py\"]")
			}
			if e.Module != "" || e.Function != "" || e.Warm {
				add(EEntrypoint, p, "a command entrypoint has no module, function or warm")
			}
			for _, a := range e.Command {
				if strings.ContainsRune(a, 0) || len(a) > MaxStringLen {
					add(EEntrypoint, p+".command", "argv entries hold no NUL and at most %d bytes", MaxStringLen)
					break
				}
			}
			key = "command:" + strings.Join(e.Command, "\x00")
		case EntryFunction:
			if !moduleRe.MatchString(e.Module) || len(e.Module) > 200 {
				add(EEntrypoint, p+".module", "module %q: want a dotted module name such as \"app\" or \"pkg.app\"", clip(e.Module))
			}
			if !identRe.MatchString(e.Function) {
				add(EEntrypoint, p+".function", "function %q: want an identifier", clip(e.Function))
			}
			if len(e.Command) > 0 {
				add(EEntrypoint, p, "a function entrypoint has no command")
			}
			key = "function:" + e.Module + ":" + e.Function
		default:
			add(EEntrypoint, p+".kind", "entrypoint kind %q: want \"command\" or \"function\"", clip(e.Kind))
			continue
		}
		if j, dup := seen[key]; dup {
			add(EDuplicateEntrypoint, p, "same entrypoint as entrypoints[%d]; declare each entrypoint once", j)
		}
		seen[key] = i
		if msg := absPathProblem(e.WorkingDir); msg != "" {
			add(EEntrypoint, p+".working_dir", "working_dir %s", msg)
		}
		for _, k := range sortedKeys(e.Env) {
			if !envKeyRe.MatchString(k) || strings.ContainsRune(e.Env[k], 0) {
				add(EEnv, p+".env."+k, "environment variable %q: name of letters, digits and '_', value without NUL", clip(k))
			}
		}
	}
	fn := 0
	for _, e := range w.Entrypoints {
		if e.Kind == EntryFunction {
			fn++
		}
	}
	if fn > 1 {
		add(EDuplicateEntrypoint, "entrypoints", "%d function entrypoints: one workload has one function (every app is one microVM)", fn)
	}

	for _, ph := range []struct {
		name string
		hs   [][]string
	}{{"before_start", w.Hooks.BeforeStart}, {"after_start", w.Hooks.AfterStart}, {"before_stop", w.Hooks.BeforeStop}} {
		name := ph.name
		for i, h := range ph.hs {
			if len(h) == 0 || h[0] == "" {
				add(EHook, fmt.Sprintf("hooks.%s[%d]", name, i), "empty hook: a hook is an argv list such as [\"python\", \"migrate.py\"]")
			}
		}
	}

	for i, f := range w.Files {
		p := fmt.Sprintf("files[%d]", i)
		if msg := absPathProblem(f.Path); msg != "" || f.Path == "/" {
			add(EFile, p+".path", "path %q must be an absolute, clean guest path other than /", clip(f.Path))
		} else if reservedGuest(f.Path) {
			add(EFile, p+".path", "path %q is under a directory the runtime owns (/proc, /sys, /dev, /run, /etc/mvm)", clip(f.Path))
		}
		b, err := base64.StdEncoding.DecodeString(f.ContentBase64)
		if err != nil {
			add(EFile, p+".content_base64", "not standard base64: %v", err)
		} else if len(b) > MaxFileBytes {
			add(EFile, p+".content_base64", "file of %d bytes is larger than %d", len(b), MaxFileBytes)
		}
		if f.Mode < 0 || f.Mode > 0o777 {
			add(EFile, p+".mode", "mode %o: permission bits only (0..0777)", f.Mode)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

func (w *Workload) validateImage(add func(code, p, format string, a ...any)) {
	im := w.Image
	only := func(fields ...string) {
		allowed := map[string]bool{}
		for _, f := range fields {
			allowed[f] = true
		}
		if !allowed["packages"] && len(im.Packages) > 0 {
			add(EImage, "image.packages", "image kind %s takes no packages", im.Kind)
		}
		if !allowed["release"] && im.Release != 0 {
			add(EImage, "image.release", "image kind %s takes no release", im.Kind)
		}
		if !allowed["version"] && im.Version != "" {
			add(EImage, "image.version", "image kind %s takes no version", im.Kind)
		}
		if !allowed["name"] && im.Name != "" {
			add(EImage, "image.name", "image kind %s takes no name", im.Kind)
		}
		if !allowed["ref"] && im.Ref != "" {
			add(EImage, "image.ref", "image kind %s takes no ref", im.Kind)
		}
	}
	pkgs := func(re *lazyre.Regexp, what string) {
		if len(im.Packages) > MaxListItems {
			add(EImage, "image.packages", "at most %d packages", MaxListItems)
		}
		for i, p := range im.Packages {
			if !re.MatchString(p) {
				add(EImage, fmt.Sprintf("image.packages[%d]", i), "%q is not a %s name", clip(p), what)
			}
		}
	}
	switch im.Kind {
	case ImageNixPackages:
		only("packages")
		if len(im.Packages) == 0 {
			add(EImage, "image.packages", "nix_packages needs at least one package, e.g. mvm.nix_packages([\"python313\"])")
		}
		pkgs(nixNameRe, "Nix attribute")
	case ImageDebianPackages:
		only("packages", "release")
		if im.Release != 12 && im.Release != 13 {
			add(EImage, "image.release", "release %d: want 12 (bookworm) or 13 (trixie)", im.Release)
		}
		pkgs(debPkgRe, "Debian package")
	case ImagePython:
		only("version", "packages")
		if !versionRe.MatchString(im.Version) {
			add(EImage, "image.version", "python_image version %q: want a version such as \"3.13\"", clip(im.Version))
		}
		pkgs(debPkgRe, "Debian package")
	case ImageNode:
		only("version")
		if !versionRe.MatchString(im.Version) {
			add(EImage, "image.version", "node_image version %q: want a major version such as \"20\"", clip(im.Version))
		}
	case ImageTemplate:
		only("name")
		if !tmplRe.MatchString(im.Name) {
			add(EImage, "image.name", "template name %q: want a template such as \"python-3.13\"", clip(im.Name))
		}
	case ImageOCI:
		only("ref")
		if msg := ociRefProblem(im.Ref); msg != "" {
			add(EImage, "image.ref", "%s; want an OCI image reference such as \"python:3.12-slim\" or \"ghcr.io/org/app@sha256:...\"", msg)
		}
	default:
		add(EImage, "image.kind", "image kind %q: want one of nix_packages, debian_packages, python_image, node_image, template, oci_image", clip(im.Kind))
	}
}

// MaxRefLen caps an OCI image reference.
const MaxRefLen = 512

// ociRefProblem says what is wrong with an OCI image reference ("" if
// nothing). A reference holds ":" or "/" (template names never do) and
// parses as a registry reference; "sha256:..." alone is a digest of a
// local image, not a reference.
func ociRefProblem(ref string) string {
	switch {
	case ref == "":
		return "empty reference"
	case len(ref) > MaxRefLen:
		return fmt.Sprintf("reference of %d bytes (at most %d)", len(ref), MaxRefLen)
	case !strings.ContainsAny(ref, ":/") || strings.HasPrefix(ref, "sha256:"):
		return fmt.Sprintf("%q is not a registry reference (it needs a tag, a digest or a repository path)", clip(ref))
	}
	if _, err := name.ParseReference(ref); err != nil {
		return fmt.Sprintf("%q: %v", clip(ref), err)
	}
	return ""
}

func (w *Workload) validateNetwork(add func(code, p, format string, a ...any)) {
	n := w.Network
	switch n.Mode {
	case NetDeny:
		if len(n.Allow) > 0 {
			add(ENetwork, "network.allow", "mode \"deny\" takes no allow list; use mvm.network(mode=\"allow\", allow=[...])")
		}
		if len(n.Ports) > 0 {
			add(ENetworkPortsDeny, "network.ports", "ports need a network interface, and mode \"deny\" has none; use mode \"allow\"")
		}
	case NetAllow:
		if len(n.Allow) == 0 && len(n.Ports) == 0 {
			add(ENetwork, "network.allow", "mode \"allow\" needs at least one destination, e.g. allow=[\"api.example.com:443\"]")
		}
	default:
		add(ENetwork, "network.mode", "mode %q: want \"deny\" (no network) or \"allow\" (an allowlist)", clip(n.Mode))
	}
	if len(n.Allow) > MaxListItems {
		add(ENetwork, "network.allow", "at most %d destinations", MaxListItems)
	}
	for i, a := range n.Allow {
		p := fmt.Sprintf("network.allow[%d]", i)
		host := allowHost(a)
		switch {
		case strings.Contains(host, "*"):
			add(ENetworkWildcard, p, "%q: wildcards are not allowed; list each host name", clip(a))
		case strings.EqualFold(host, netpolicy.HostAlias):
			add(ENetwork, p, "%q is the host's own loopback; a declaration can never allow it (only the operator, with --allow on the command line)", clip(a))
		case isIPish(host):
			add(ENetworkIPLiteral, p, "%q: IP addresses and CIDRs are not allowed; name the host (the egress proxy matches names)", clip(a))
		default:
			if _, err := netpolicy.ParseAllow(a); err != nil {
				add(ENetwork, p, "%v", err)
			}
		}
	}
	seenHost := map[int]bool{}
	for i, pt := range n.Ports {
		p := fmt.Sprintf("network.ports[%d]", i)
		if pt.Guest < 1 || pt.Guest > 65535 || pt.Host < 0 || pt.Host > 65535 {
			add(ENetwork, p, "guest port 1..65535, host port 0..65535 (0 = the guest port)")
		}
		h := pt.Host
		if h == 0 {
			h = pt.Guest
		}
		if seenHost[h] {
			add(ENetwork, p, "host port %d published twice", h)
		}
		seenHost[h] = true
	}
}

// allowHost strips the port of a host[:port] entry (and brackets).
func allowHost(s string) string {
	h := s
	if strings.HasPrefix(h, "[") {
		if i := strings.Index(h, "]"); i > 0 {
			return h[1:i]
		}
	}
	if strings.Count(h, ":") == 1 {
		h, _, _ = strings.Cut(h, ":")
	}
	return h
}

func isIPish(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if _, err := netip.ParsePrefix(h); err == nil {
		return true
	}
	// 10.0.0 or 0x7f000001 style numeric hosts
	if h != "" && strings.Trim(h, "0123456789.") == "" {
		return true
	}
	if strings.HasPrefix(strings.ToLower(h), "0x") {
		if _, err := strconv.ParseUint(h[2:], 16, 64); err == nil {
			return true
		}
	}
	return false
}

func relPathProblem(p string) string {
	switch {
	case p == "":
		return "empty path"
	case strings.ContainsRune(p, 0) || len(p) > MaxStringLen:
		return "path holds NUL or is too long"
	case path.IsAbs(p):
		return fmt.Sprintf("%q is absolute", clip(p))
	}
	c := path.Clean(p)
	if c == ".." || strings.HasPrefix(c, "../") {
		return fmt.Sprintf("%q leaves the declaration's directory", clip(p))
	}
	return ""
}

func globProblem(g string) string {
	if g == "" {
		return "empty pattern"
	}
	if strings.ContainsRune(g, 0) || len(g) > MaxStringLen {
		return "pattern holds NUL or is too long"
	}
	if path.IsAbs(g) {
		return fmt.Sprintf("pattern %q is absolute: patterns are relative to the source path", clip(g))
	}
	for _, seg := range strings.Split(g, "/") {
		if seg == ".." {
			return fmt.Sprintf("pattern %q uses ..: patterns cannot leave the source tree", clip(g))
		}
	}
	if _, err := path.Match(strings.ReplaceAll(g, "**", "*"), ""); err != nil {
		return fmt.Sprintf("pattern %q: %v", clip(g), err)
	}
	return ""
}

func absPathProblem(p string) string {
	if !path.IsAbs(p) || path.Clean(p) != p || strings.ContainsRune(p, 0) || len(p) > MaxStringLen {
		return fmt.Sprintf("%q must be an absolute, clean path such as /app", clip(p))
	}
	return ""
}

func reservedGuest(p string) bool {
	for _, r := range []string{"/proc", "/sys", "/dev", "/run", "/etc/mvm"} {
		if p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return false
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ErrKind places IR problems in the shared error model: the declaration
// is an invalid argument.
func (e *Error) ErrKind() (errdefs.Kind, string) { return errdefs.KindInvalidArgument, "" }

// ErrKind of a list is that of its problems.
func (l Errors) ErrKind() (errdefs.Kind, string) { return errdefs.KindInvalidArgument, "" }
