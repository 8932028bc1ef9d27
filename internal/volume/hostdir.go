package volume

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/plan"
)

// MountSpec is one -v argument: HOST_DIR:GUEST_PATH[:ro|:rw] (a host
// directory; read-only by default) or NAME:GUEST_PATH[:ro|:rw] (a volume;
// read-write by default). A source containing "/" or starting with "."
// or "~" is a host directory; anything else names a volume.
type MountSpec struct {
	Source   string `json:"source"` // absolute host path, or volume name
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only"`
	Volume   bool   `json:"volume"`
	// Origin is who asked for it: "" for the operator (-v, the SDKs),
	// OriginManifest for an image manifest's [[mount]].
	Origin string `json:"origin,omitempty"`
}

// OriginManifest marks a mount that an image manifest (mvm.toml) asked
// for: a request, applied only with the operator's consent.
const OriginManifest = plan.OriginManifest

// String is the mount as -v would write it (host paths absolute).
func (m MountSpec) String() string {
	mode := "rw"
	if m.ReadOnly {
		mode = "ro"
	}
	return m.Source + ":" + m.Target + ":" + mode
}

// reservedGuest are guest paths a mount may not cover.
var reservedGuest = []string{"/proc", "/sys", "/dev", "/run"}

// ParseMountSpec parses a -v argument. Relative host paths are resolved
// against the working directory.
func ParseMountSpec(s string) (MountSpec, error) {
	bad := func(format string, a ...any) (MountSpec, error) {
		return MountSpec{}, invalidf("-v %s: %s", s, fmt.Sprintf(format, a...))
	}
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return bad("want HOST_DIR:GUEST_PATH[:ro|:rw] or VOLUME:GUEST_PATH[:ro|:rw]")
	}
	m := MountSpec{Source: parts[0], Target: parts[1]}
	m.Volume = !strings.ContainsRune(m.Source, '/') && !strings.HasPrefix(m.Source, ".") && !strings.HasPrefix(m.Source, "~")
	m.ReadOnly = !m.Volume
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			m.ReadOnly = true
		case "rw":
			m.ReadOnly = false
		default:
			return bad("mode %q: want ro or rw", parts[2])
		}
	}
	if err := CheckGuestPath(m.Target); err != nil {
		return bad("%v", err)
	}
	if m.Volume {
		if err := ValidateName(m.Source); err != nil {
			return bad("%v", err)
		}
		return m, nil
	}
	if strings.HasPrefix(m.Source, "~") {
		return bad("the shell did not expand ~; give the path without it")
	}
	abs, err := filepath.Abs(m.Source)
	if err != nil {
		return bad("%v", err)
	}
	m.Source = abs
	return m, nil
}

// CheckGuestPath refuses guest paths that are not absolute and clean, or
// that cover / or the guest's pseudo file systems.
func CheckGuestPath(p string) error {
	if p == "" || !path.IsAbs(p) || path.Clean(p) != p || len(p) > 256 || strings.ContainsAny(p, "\x00\n,:") {
		return fmt.Errorf("guest path %q must be absolute and clean (no ':' or ',')", p)
	}
	if p == "/" {
		return errors.New("guest path / would hide the guest's root")
	}
	for _, r := range reservedGuest {
		if p == r || strings.HasPrefix(p, r+"/") {
			return fmt.Errorf("guest path %s is under %s, which the guest needs for itself", p, r)
		}
	}
	return nil
}

// CheckHostDir refuses a host directory that must not be shared: one that
// does not exist or is not a directory, a symlink (or a path through one),
// /, the home directory, or mvm's own directories (protected are each of
// them, everything inside them, and every parent of them). It returns the
// path, cleaned.
func CheckHostDir(p, home string, mvmDirs ...string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", invalidf("host directory %q must be an absolute path", p)
	}
	p = filepath.Clean(p)
	if strings.ContainsAny(p, ",\\") || strings.IndexFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		// virtiofsd reads its -o source=PATH as comma-separated options
		// (a backslash escapes): a directory named "x,source=/etc" would make it
		// share /etc instead.
		return "", invalidf("host directory %q has a ',', a '\\' or a control character, which virtiofsd would read as option syntax; rename it or share a directory without one", p)
	}
	st, err := os.Lstat(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", invalidf("host directory %s does not exist; create it first", p)
		}
		return "", invalidf("host directory %s: %v", p, err)
	}
	if st.Mode()&os.ModeSymlink != 0 {
		real, _ := filepath.EvalSymlinks(p)
		return "", invalidf("host directory %s is a symlink (to %s); give the real directory instead", p, real)
	}
	if !st.IsDir() {
		return "", invalidf("%s is not a directory; only directories can be shared", p)
	}
	if real, err := filepath.EvalSymlinks(p); err != nil || real != p {
		return "", invalidf("host directory %s goes through a symlink (it is %s); give the real path", p, real)
	}
	if p == "/" {
		return "", invalidf("sharing / would give the guest the whole host; share a project directory instead")
	}
	if home != "" && p == filepath.Clean(home) {
		return "", invalidf("sharing your home directory %s would expose keys and credentials; share a subdirectory instead", p)
	}
	for _, d := range mvmDirs {
		if d == "" {
			continue
		}
		d = filepath.Clean(d)
		if p == d || strings.HasPrefix(d, p+"/") || strings.HasPrefix(p, d+"/") {
			return "", invalidf("host directory %s overlaps mvm's own directory %s (keys, evidence, sandboxes); share another directory", p, d)
		}
	}
	return p, nil
}
