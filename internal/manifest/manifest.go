// Package manifest parses and validates mvm.toml, the file that declares
// what a user image holds and how its sandboxes run.
//
// The smallest valid manifest is the single line
//
//	template = "python"
//
// Decoding is strict: an unknown key, a value of the wrong type or a value
// out of range is an error that names the file, the key and (when the TOML
// decoder knows it) the line. See docs/manifest.md for the format.
package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/lazyre"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/secret"
	"github.com/mvm-sandbox/mvm/internal/volume"
	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// FileName is the manifest's name inside a build directory.
const FileName = "mvm.toml"

// Defaults and limits.
const (
	DefaultWorkdir = "/work"
	DefaultProfile = ProfileDev
	DefaultDiskMiB = 4096
	MinMemoryMiB   = 128
	MaxMemoryMiB   = 16 * 1024
	MinDiskMiB     = 256
	MaxDiskMiB     = 1024 * 1024
	MinCPUs        = 1
	MaxCPUs        = 16
	// MaxManifestBytes bounds the manifest file we are willing to read.
	MaxManifestBytes = 1 << 20
)

// Profiles an image can carry.
const (
	ProfileDev    = "dev"
	ProfileSealed = "sealed"
)

// Manifest is a validated mvm.toml. Zero values of CPUs and MemoryMiB mean
// "not set in the manifest" (the runtime picks its own defaults); the other
// fields hold their documented defaults once Parse returns.
type Manifest struct {
	// Path is the manifest file and Dir the directory holding it (the build
	// context). Both are empty for a manifest parsed from bytes with an empty
	// path.
	Path string `json:"path,omitempty"`
	Dir  string `json:"dir,omitempty"`

	Template string `json:"template"`
	// Image is an OCI image reference the image is built on instead of a
	// template (image = "python:3.12-slim"); Template is then "".
	Image     string            `json:"image,omitempty"`
	Name      string            `json:"name,omitempty"`
	Packages  []string          `json:"packages,omitempty"`
	Files     []FileMapping     `json:"files,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	CPUs      int               `json:"cpus,omitempty"`
	MemoryMiB int64             `json:"memory_mib,omitempty"`
	DiskMiB   int64             `json:"disk_mib"`
	Command   []string          `json:"command,omitempty"`
	Workdir   string            `json:"workdir"`
	Profile   string            `json:"profile"`
	// Network is "" / "none" or a preset name; Allow lists HOST[:PORT]
	// destinations. Both are enforced on the host at boot (docs/network.md).
	Network string   `json:"network,omitempty"`
	Allow   []string `json:"allow,omitempty"`
	// Mounts are the [[mount]] tables: host directories (Source absolute,
	// resolved against Dir) and volumes, each with Origin
	// volume.OriginManifest. Like Network they are a request: applied at
	// up/run from DIR only with the operator's consent
	// (docs/manifest.md), never part of the image.
	Mounts []volume.MountSpec `json:"mounts,omitempty"`
	// Secrets are the [secrets] table (TARGET = "NAME": an environment
	// variable or /run/secrets/FILE gets the stored secret NAME), with
	// Origin "manifest". Names only; a request like Mounts, applied only
	// with --allow-manifest-secrets.
	Secrets []secret.Ref `json:"secrets,omitempty"`
}

// MaxMounts bounds the [[mount]] tables of one manifest (the plan's limit
// for host directories and volumes together).
const MaxMounts = 16

// FileMapping copies Source (a path relative to the manifest directory,
// "." for the directory itself) to the absolute guest path Guest.
type FileMapping struct {
	Guest  string `json:"guest"`
	Source string `json:"source"`
	// Exclude lists paths relative to Source that are left out. The default
	// /work mapping excludes mvm.toml and .git.
	Exclude []string `json:"exclude,omitempty"`
}

// DefaultExcludes are left out of the default "/work" = "." mapping.
var DefaultExcludes = []string{FileName, ".git"}

// Error is one problem in a manifest: the file, the key and, when known,
// the line it is on.
type Error struct {
	File string
	Key  string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Key != "" {
		fmt.Fprintf(&b, "key %s: ", e.Key)
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem found in one manifest, in file order.
type ErrorList []*Error

func (l ErrorList) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Unwrap lets errors.As find each *Error.
func (l ErrorList) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

type rawManifest struct {
	Template *string        `toml:"template"`
	Image    *string        `toml:"image"`
	Name     *string        `toml:"name"`
	Packages []string       `toml:"packages"`
	Files    map[string]any `toml:"files"`
	Env      map[string]any `toml:"env"`
	CPUs     any            `toml:"cpus"`
	Memory   any            `toml:"memory"`
	Disk     any            `toml:"disk"`
	Command  any            `toml:"command"`
	Workdir  *string        `toml:"workdir"`
	Profile  *string        `toml:"profile"`
	Network  *string        `toml:"network"`
	Allow    []string       `toml:"allow"`
	Mount    []any          `toml:"mount"`
	Secrets  map[string]any `toml:"secrets"`
}

var (
	nameRE    = lazyre.New(`^[a-z0-9][a-z0-9-]{0,62}$`)
	envKeyRE  = lazyre.New(`^[A-Za-z_][A-Za-z0-9_]*$`)
	packageRE = lazyre.New(`^[a-z0-9][a-z0-9+.-]+$`)
	// TemplateRE is the syntax of a template name (whether it exists is the
	// image package's business).
	TemplateRE = lazyre.New(`^[a-z0-9][a-z0-9.-]{0,62}$`)
)

// reservedGuestDirs may not be the target of a file mapping.
var reservedGuestDirs = []string{"/proc", "/sys", "/dev", "/run", "/etc/mvm"}

// Load reads DIR/mvm.toml, validates it and checks that every file mapping
// names something that exists inside DIR.
func Load(dir string) (*Manifest, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(abs, FileName)
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no %s in %s", p, FileName, abs)
		}
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if len(data) > MaxManifestBytes {
		return nil, &Error{File: p, Msg: fmt.Sprintf("manifest larger than %d bytes", MaxManifestBytes)}
	}
	m, err := Parse(p, data)
	if err != nil {
		return nil, err
	}
	if err := m.checkSources(data); err != nil {
		return nil, err
	}
	return m, nil
}

// Parse decodes and validates a manifest. path is used in error messages
// and, when not empty, to set Path and Dir; it is not read.
func Parse(file string, data []byte) (*Manifest, error) {
	lines := keyLines(data)
	errs := ErrorList{}
	add := func(key, format string, args ...any) {
		errs = append(errs, &Error{File: file, Key: key, Line: lines[key], Msg: fmt.Sprintf(format, args...)})
	}

	var raw rawManifest
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		var sm *toml.StrictMissingError
		var de *toml.DecodeError
		switch {
		case errors.As(err, &sm):
			for i := range sm.Errors {
				e := &sm.Errors[i]
				row, _ := e.Position()
				key := strings.Join(e.Key(), ".")
				errs = append(errs, &Error{File: file, Key: key, Line: row, Msg: "unknown key" + knownKeysHint(e.Key())})
			}
		case errors.As(err, &de):
			row, _ := de.Position()
			key := strings.Join(de.Key(), ".")
			msg := cleanTypeMsg(key, strings.TrimPrefix(de.Error(), "toml: "))
			if row == 0 && key != "" {
				row = lines[key]
			}
			errs = append(errs, &Error{File: file, Key: key, Line: row, Msg: msg})
		default:
			// Type mismatches come back as plain errors naming the Go
			// field; recover the TOML key from the message when we can.
			msg := strings.TrimPrefix(err.Error(), "toml: ")
			key := guessKey(msg)
			errs = append(errs, &Error{File: file, Key: key, Line: lines[key], Msg: cleanTypeMsg(key, msg)})
		}
		return nil, errs
	}

	m := &Manifest{DiskMiB: DefaultDiskMiB, Workdir: DefaultWorkdir, Profile: DefaultProfile}
	if file != "" {
		if a, err := filepath.Abs(file); err == nil {
			m.Path = a
			m.Dir = filepath.Dir(a)
		}
	}

	// template
	switch {
	case raw.Image != nil && raw.Template != nil:
		add("image", "give either template or image, not both")
	case raw.Image != nil:
		if r := *raw.Image; len(r) > 512 || !strings.ContainsAny(r, ":/") || strings.ContainsAny(r, " \t\n\x00") || strings.HasPrefix(r, "sha256:") {
			add("image", "invalid OCI image reference %q (for example: image = \"python:3.12-slim\" or \"ghcr.io/org/app@sha256:...\")", r)
		} else {
			m.Image = r
		}
		if len(raw.Packages) > 0 {
			add("packages", "packages need a Debian template (debian, python, node); an OCI image brings its own")
		}
	case raw.Template == nil:
		errs = append(errs, &Error{File: file, Key: "template", Msg: `required key missing (for example: template = "python", or image = "python:3.12-slim")`})
	case !TemplateRE.MatchString(*raw.Template):
		add("template", "invalid template name %q", *raw.Template)
	default:
		m.Template = *raw.Template
	}

	// name
	if raw.Name != nil {
		if !nameRE.MatchString(*raw.Name) {
			add("name", "invalid name %q: want 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit", *raw.Name)
		} else {
			m.Name = *raw.Name
		}
	}

	// packages
	seen := map[string]bool{}
	for i, p := range raw.Packages {
		if !packageRE.MatchString(p) || len(p) > 128 {
			add("packages", "entry %d: %q is not a Debian package name", i, p)
			continue
		}
		if !seen[p] {
			seen[p] = true
			m.Packages = append(m.Packages, p)
		}
	}
	sort.Strings(m.Packages)

	// env
	if raw.Env != nil {
		m.Env = map[string]string{}
		for _, k := range sortedKeys(raw.Env) {
			key := "env." + k
			if !envKeyRE.MatchString(k) {
				add(key, "invalid environment variable name %q: want [A-Za-z_][A-Za-z0-9_]*", k)
				continue
			}
			v, ok := raw.Env[k].(string)
			if !ok {
				add(key, "value must be a string, got %s", tomlType(raw.Env[k]))
				continue
			}
			if strings.IndexByte(v, 0) >= 0 {
				add(key, "value contains a NUL byte")
				continue
			}
			m.Env[k] = v
		}
	}

	// cpus
	if raw.CPUs != nil {
		n, ok := raw.CPUs.(int64)
		switch {
		case !ok:
			add("cpus", "must be an integer, got %s", tomlType(raw.CPUs))
		case n < MinCPUs || n > MaxCPUs:
			add("cpus", "must be between %d and %d, got %d", MinCPUs, MaxCPUs, n)
		default:
			m.CPUs = int(n)
		}
	}

	// memory, disk
	if raw.Memory != nil {
		if v, err := sizeValue(raw.Memory); err != nil {
			add("memory", "%v", err)
		} else if v < MinMemoryMiB || v > MaxMemoryMiB {
			add("memory", "must be between %s and %s, got %s", FormatSize(MinMemoryMiB), FormatSize(MaxMemoryMiB), FormatSize(v))
		} else {
			m.MemoryMiB = v
		}
	}
	if raw.Disk != nil {
		if v, err := sizeValue(raw.Disk); err != nil {
			add("disk", "%v", err)
		} else if v < MinDiskMiB || v > MaxDiskMiB {
			add("disk", "must be between %s and %s, got %s", FormatSize(MinDiskMiB), FormatSize(MaxDiskMiB), FormatSize(v))
		} else {
			m.DiskMiB = v
		}
	}

	// command
	if raw.Command != nil {
		arr, ok := raw.Command.([]any)
		if !ok {
			add("command", `must be a list of strings (an argv), for example ["python", "main.py"]; got %s`, tomlType(raw.Command))
		} else if len(arr) == 0 {
			add("command", "must not be empty")
		} else {
			for i, a := range arr {
				s, ok := a.(string)
				if !ok {
					add("command", "entry %d must be a string, got %s", i, tomlType(a))
					break
				}
				if strings.IndexByte(s, 0) >= 0 {
					add("command", "entry %d contains a NUL byte", i)
					break
				}
				if i == 0 && s == "" {
					add("command", "the program (entry 0) must not be empty")
					break
				}
				m.Command = append(m.Command, s)
			}
			if len(m.Command) != len(arr) {
				m.Command = nil
			}
		}
	}

	// workdir
	if raw.Workdir != nil {
		if err := checkGuestPath(*raw.Workdir, false); err != nil {
			add("workdir", "%v", err)
		} else {
			m.Workdir = *raw.Workdir
		}
	}

	// profile
	if raw.Profile != nil {
		switch *raw.Profile {
		case ProfileDev, ProfileSealed:
			m.Profile = *raw.Profile
		default:
			add("profile", `must be "dev" or "sealed", got %q`, *raw.Profile)
		}
	}

	// network, allow: checked with the same rules as --network/--allow.
	// An unrestricted network is never declared in a manifest: it needs
	// the caller's explicit acknowledgement at boot time.
	if raw.Network != nil || len(raw.Allow) > 0 {
		n := ""
		if raw.Network != nil {
			n = strings.TrimSpace(*raw.Network)
		}
		if strings.EqualFold(n, "unrestricted") {
			add("network", `"unrestricted" cannot be declared in a manifest; ask for it at boot with --network unrestricted`)
		} else {
			key := "allow"
			if len(raw.Allow) == 0 {
				key = "network"
			}
			noAck := func(string) (string, bool) { return "", false }
			// OriginManifest: a manifest can never allow the host's own
			// loopback (netpolicy.HostAlias).
			if _, _, err := netpolicy.Build(netpolicy.Request{Network: n, Allow: raw.Allow, Origin: netpolicy.OriginManifest}, noAck); err != nil {
				add(key, "%v", err)
			} else {
				m.Network = n
				m.Allow = append([]string(nil), raw.Allow...)
			}
		}
	}

	// [[mount]]
	m.Mounts = parseMounts(raw.Mount, m.Dir, lines, add)

	// [secrets]: TARGET = "NAME", checked like --secret NAME:TARGET
	for _, target := range sortedKeys(raw.Secrets) {
		key := "secrets." + quoteKey(target)
		if lines[key] == 0 {
			lines[key] = lines["secrets."+target]
		}
		name, ok := raw.Secrets[target].(string)
		if !ok {
			add(key, `value must be the name of a stored secret (a string), got %s`, tomlType(raw.Secrets[target]))
			continue
		}
		ref, err := secret.ParseRef(name + ":" + target)
		if err != nil {
			add(key, "%v", err)
			continue
		}
		ref.Origin = volume.OriginManifest
		m.Secrets = append(m.Secrets, ref)
	}
	if len(m.Secrets) > 64 {
		add("secrets", "%d secrets exceed the limit of 64", len(m.Secrets))
		m.Secrets = nil
	}

	// files
	haveWork := false
	for _, g := range sortedKeys(raw.Files) {
		key := "files." + quoteKey(g)
		if lines[key] == 0 {
			lines[key] = lines["files."+g]
		}
		src, ok := raw.Files[g].(string)
		if !ok {
			add(key, "source must be a string path relative to the manifest directory, got %s", tomlType(raw.Files[g]))
			continue
		}
		if err := checkGuestPath(g, true); err != nil {
			add(key, "%v", err)
			continue
		}
		if g == DefaultWorkdir {
			haveWork = true
			if src == "" { // "/work" = "" turns the default mapping off
				continue
			}
		}
		if err := checkSourcePath(src); err != nil {
			add(key, "%v", err)
			continue
		}
		fm := FileMapping{Guest: g, Source: path.Clean(src)}
		if fm.Source == "." {
			fm.Exclude = append([]string(nil), DefaultExcludes...)
		}
		m.Files = append(m.Files, fm)
	}
	if !haveWork {
		m.Files = append([]FileMapping{{Guest: DefaultWorkdir, Source: ".", Exclude: append([]string(nil), DefaultExcludes...)}}, m.Files...)
	}

	if len(errs) > 0 {
		sort.SliceStable(errs, func(i, j int) bool { return lineKey(errs[i].Line) < lineKey(errs[j].Line) })
		return nil, errs
	}
	return m, nil
}

// parseMounts checks the [[mount]] tables: exactly one of host (a host
// directory, relative to the manifest directory) or volume (a volume
// name), guest (an absolute guest path) and mode ("ro" or "rw"; host
// directories are read-only by default, volumes read-write). Whether a
// host directory may be shared (it exists, is no symlink, is not /, $HOME
// or mvm's own) is checked at boot, with the same rules as -v.
func parseMounts(raw []any, dir string, lines map[string]int, add func(key, format string, args ...any)) []volume.MountSpec {
	if len(raw) > MaxMounts {
		add("mount", "%d [[mount]] tables exceed the limit of %d", len(raw), MaxMounts)
		return nil
	}
	var out []volume.MountSpec
	for i, r := range raw {
		key := fmt.Sprintf("mount[%d]", i)
		if lines[key] == 0 {
			lines[key] = lines["mount"]
		}
		t, ok := r.(map[string]any)
		if !ok {
			add(key, "must be a table ([[mount]]), got %s", tomlType(r))
			continue
		}
		str := func(k string) (string, bool) {
			v, present := t[k]
			if !present {
				return "", false
			}
			s, ok := v.(string)
			if !ok {
				add(key, "%s must be a string, got %s", k, tomlType(v))
				return "", false
			}
			return s, true
		}
		bad := false
		for _, k := range sortedKeys(t) {
			switch k {
			case "host", "volume", "guest", "mode":
			default:
				add(key, "unknown key %q (known keys: host, volume, guest, mode)", k)
				bad = true
			}
		}
		host, hasHost := str("host")
		vol, hasVol := str("volume")
		guest, hasGuest := str("guest")
		mode, hasMode := str("mode")
		if bad {
			continue
		}
		ms := volume.MountSpec{Target: guest, Origin: volume.OriginManifest}
		switch {
		case hasHost == hasVol:
			add(key, `give exactly one of host = "DIR" (a host directory) or volume = "NAME"`)
			continue
		case hasVol:
			if err := volume.ValidateName(vol); err != nil {
				add(key, "volume: %v", err)
				continue
			}
			ms.Source, ms.Volume = vol, true
		default:
			p, err := hostPath(host, dir)
			if err != nil {
				add(key, "host: %v", err)
				continue
			}
			ms.Source, ms.ReadOnly = p, true
		}
		if !hasGuest {
			add(key, `guest is required (for example: guest = "/data")`)
			continue
		}
		if err := volume.CheckGuestPath(guest); err != nil {
			add(key, "guest: %v", err)
			continue
		}
		if hasMode {
			switch mode {
			case "ro":
				ms.ReadOnly = true
			case "rw":
				ms.ReadOnly = false
			default:
				add(key, `mode must be "ro" or "rw", got %q`, mode)
				continue
			}
		}
		out = append(out, ms)
	}
	return out
}

// hostPath resolves a [[mount]] host directory against the manifest
// directory; the result is absolute and clean.
func hostPath(p, dir string) (string, error) {
	switch {
	case p == "":
		return "", errors.New("must not be empty")
	case len(p) > 4096:
		return "", errors.New("longer than 4096 bytes")
	case strings.HasPrefix(p, "~"):
		return "", errors.New("~ is not expanded; give a path relative to the manifest directory or an absolute one")
	case strings.IndexByte(p, 0) >= 0:
		return "", errors.New("contains a NUL byte")
	}
	if filepath.IsAbs(p) {
		return filepath.Clean(p), nil
	}
	if dir == "" {
		return "", fmt.Errorf("relative path %q needs the manifest's directory", p)
	}
	return filepath.Join(dir, p), nil
}

// checkSources resolves every file mapping against Dir: the source must
// exist and, after following symlinks, stay inside Dir.
func (m *Manifest) checkSources(data []byte) error {
	if m.Dir == "" {
		return nil
	}
	lines := keyLines(data)
	root, err := filepath.EvalSymlinks(m.Dir)
	if err != nil {
		return err
	}
	var errs ErrorList
	for _, f := range m.Files {
		key := "files." + quoteKey(f.Guest)
		line := lines[key]
		if line == 0 {
			line = lines["files."+f.Guest]
		}
		full := filepath.Join(root, filepath.FromSlash(f.Source))
		real, err := filepath.EvalSymlinks(full)
		if err != nil {
			if f.Guest == DefaultWorkdir && f.Source == "." {
				continue
			}
			errs = append(errs, &Error{File: m.Path, Key: key, Line: line, Msg: fmt.Sprintf("source %q: %v", f.Source, unwrapPathErr(err))})
			continue
		}
		if real != root && !strings.HasPrefix(real, root+string(filepath.Separator)) {
			errs = append(errs, &Error{File: m.Path, Key: key, Line: line, Msg: fmt.Sprintf("source %q resolves to %s, outside the manifest directory", f.Source, real)})
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// SourcePath returns the host path of a mapping's source.
func (m *Manifest) SourcePath(f FileMapping) string {
	return filepath.Join(m.Dir, filepath.FromSlash(f.Source))
}

func unwrapPathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func lineKey(l int) int {
	if l == 0 {
		return math.MaxInt
	}
	return l
}

func checkGuestPath(p string, mapping bool) error {
	if p == "" {
		return errors.New("path must not be empty")
	}
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("guest path %q must be absolute", p)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return errors.New("path contains a NUL byte")
	}
	if path.Clean(p) != p {
		return fmt.Errorf("guest path %q is not clean (want %q)", p, path.Clean(p))
	}
	if mapping {
		if p == "/" {
			return errors.New(`cannot map files onto "/"`)
		}
		for _, r := range reservedGuestDirs {
			if p == r || strings.HasPrefix(p, r+"/") {
				return fmt.Errorf("guest path %q is under %s, which the runtime owns", p, r)
			}
		}
	}
	return nil
}

func checkSourcePath(s string) error {
	if s == "" {
		return errors.New(`source must not be empty (only "/work" = "" is allowed, to turn the default mapping off)`)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return errors.New("source contains a NUL byte")
	}
	if filepath.IsAbs(s) || strings.HasPrefix(s, "/") {
		return fmt.Errorf("source %q must be relative to the manifest directory", s)
	}
	c := path.Clean(filepath.ToSlash(s))
	if c == ".." || strings.HasPrefix(c, "../") {
		return fmt.Errorf("source %q leaves the manifest directory", s)
	}
	return nil
}

// ParseSize parses a size for memory or disk: "512M", "1G", "1.5G",
// "2048" (MiB), with optional "MiB"/"MB"/"GiB"/"GB"/"T" suffixes (all
// binary). The result is in MiB and must be a whole, positive number.
func ParseSize(s string) (int64, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, errors.New("empty size")
	}
	num := in
	mult := 1.0
	lower := strings.ToLower(in)
	for _, suf := range []struct {
		s string
		m float64
	}{
		{"mib", 1}, {"mb", 1}, {"m", 1},
		{"gib", 1024}, {"gb", 1024}, {"g", 1024},
		{"tib", 1024 * 1024}, {"tb", 1024 * 1024}, {"t", 1024 * 1024},
	} {
		if strings.HasSuffix(lower, suf.s) {
			num = strings.TrimSpace(in[:len(in)-len(suf.s)])
			mult = suf.m
			break
		}
	}
	if num == "" || strings.ContainsAny(num, "+-eExX_") {
		return 0, fmt.Errorf("invalid size %q: want a number of MiB or a size like 512M or 1G", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("invalid size %q: want a number of MiB or a size like 512M or 1G", s)
	}
	v := f * mult
	if v <= 0 {
		return 0, fmt.Errorf("invalid size %q: must be positive", s)
	}
	if v > 1<<40 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("invalid size %q: not a whole number of MiB", s)
	}
	return int64(v), nil
}

// FormatSize renders MiB as "512M" or "2G".
func FormatSize(mib int64) string {
	if mib >= 1024 && mib%1024 == 0 {
		return fmt.Sprintf("%dG", mib/1024)
	}
	return fmt.Sprintf("%dM", mib)
}

func sizeValue(v any) (int64, error) {
	switch x := v.(type) {
	case int64:
		if x <= 0 {
			return 0, fmt.Errorf("invalid size %d: must be positive", x)
		}
		return x, nil
	case string:
		return ParseSize(x)
	default:
		return 0, fmt.Errorf(`must be a size string like "512M" or "1G", or an integer number of MiB; got %s`, tomlType(v))
	}
}

func tomlType(v any) string {
	switch v.(type) {
	case nil:
		return "nothing"
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	default:
		return fmt.Sprintf("a %T", v)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func quoteKey(k string) string {
	if envKeyRE.MatchString(k) {
		return k
	}
	return strconv.Quote(k)
}

// topKeys are the manifest's keys, in file order: the toml tags of
// rawManifest (one definition).
var topKeys, fieldToKey = manifestKeys()

func manifestKeys() ([]string, map[string]string) {
	t := reflect.TypeOf(rawManifest{})
	keys := make([]string, 0, t.NumField())
	byField := map[string]string{}
	for i := 0; i < t.NumField(); i++ {
		k := t.Field(i).Tag.Get("toml")
		keys = append(keys, k)
		byField[t.Field(i).Name] = k
	}
	return keys, byField
}

func knownKeysHint(key []string) string {
	if len(key) == 1 {
		return " (known keys: " + strings.Join(topKeys, ", ") + ")"
	}
	return ""
}

var fieldRE = lazyre.New(`rawManifest\.(\w+)`)

func guessKey(msg string) string {
	if m := fieldRE.FindStringSubmatch(msg); m != nil {
		if k, ok := fieldToKey[m[1]]; ok {
			return k
		}
	}
	for _, k := range topKeys {
		if strings.Contains(msg, "'"+k+"'") || strings.Contains(msg, `"`+k+`"`) {
			return k
		}
	}
	return ""
}

var typeMsgRE = lazyre.New(`cannot decode TOML (\w+) into .*`)

var wantType = map[string]string{
	"template": "a string", "name": "a string", "packages": "a list of package names",
	"files": "a table of guest path = source path", "env": "a table of NAME = value",
	"workdir": "a string", "profile": "a string", "mount": "[[mount]] tables", "secrets": "a table of TARGET = secret name",
}

func cleanTypeMsg(key, msg string) string {
	if m := typeMsgRE.FindStringSubmatch(msg); m != nil {
		want := wantType[key]
		if want == "" {
			want = "a different type"
		}
		return fmt.Sprintf("wrong type: got a TOML %s, want %s", m[1], want)
	}
	return msg
}

// keyLines maps dotted keys ("cpus", "env.FOO", `files."/opt/app"`, and
// the unquoted form "files./opt/app") to the line they are set on.
func keyLines(data []byte) map[string]int {
	out := map[string]int{}
	defer func() { _ = recover() }() // positions are best effort
	var p unstable.Parser
	p.Reset(data)
	var table []string
	arrays := map[string]int{} // [[x]] tables seen so far, by name
	line := func(n *unstable.Node) int {
		if n.Raw.Length > 0 {
			return p.Shape(n.Raw).Start.Line
		}
		return p.Shape(p.Range(n.Data)).Start.Line
	}
	for p.NextExpression() {
		e := p.Expression()
		var parts []string
		var quoted []string
		first := 0
		it := e.Key()
		for it.Next() {
			n := it.Node()
			if first == 0 {
				first = safeLine(line, n)
			}
			parts = append(parts, string(n.Data))
			quoted = append(quoted, quoteKey(string(n.Data)))
		}
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = parts
			set(out, table, quoted, first)
			if e.Kind == unstable.ArrayTable {
				k := strings.Join(parts, ".")
				if first > 0 {
					out[fmt.Sprintf("%s[%d]", k, arrays[k])] = first
				}
				arrays[k]++
			}
		case unstable.KeyValue:
			full := append(append([]string{}, table...), parts...)
			var fq []string
			for _, t := range table {
				fq = append(fq, quoteKey(t))
			}
			fq = append(fq, quoted...)
			set(out, full, fq, first)
			// keys of an inline table value
			if v := e.Value(); v != nil && v.Kind == unstable.InlineTable {
				ch := v.Children()
				for ch.Next() {
					kv := ch.Node()
					ki := kv.Key()
					var sub, subq []string
					l := 0
					for ki.Next() {
						kn := ki.Node()
						if l == 0 {
							l = safeLine(line, kn)
						}
						sub = append(sub, string(kn.Data))
						subq = append(subq, quoteKey(string(kn.Data)))
					}
					set(out, append(append([]string{}, full...), sub...), append(append([]string{}, fq...), subq...), l)
				}
			}
		}
	}
	return out
}

func safeLine(f func(*unstable.Node) int, n *unstable.Node) (l int) {
	defer func() {
		if recover() != nil {
			l = 0
		}
	}()
	return f(n)
}

func set(out map[string]int, parts, quoted []string, line int) {
	if line == 0 {
		return
	}
	k := strings.Join(parts, ".")
	if _, ok := out[k]; !ok {
		out[k] = line
	}
	q := strings.Join(quoted, ".")
	if _, ok := out[q]; !ok {
		out[q] = line
	}
}
