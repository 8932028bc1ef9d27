package image

import (
	"fmt"
	"sort"
	"strings"
)

// Template is a base root filesystem that images are built from.
//
// Every template has a versioned canonical name ("python-3.11") and may be
// reached through an unversioned alias ("python") that follows Debian 12,
// the release this runtime is developed on. The versions listed are the
// ones the Debian suite really ships; there is no template for a version
// no Debian release provides.
type Template struct {
	Name        string   `json:"name"`              // canonical, versioned: "python-3.11"
	Aliases     []string `json:"aliases,omitempty"` // e.g. "python"
	Family      string   `json:"family"`            // minimal, debian, python, node
	Version     string   `json:"version"`           // version of the family's main component
	Suite       string   `json:"suite,omitempty"`   // Debian suite; "" for minimal
	Packages    []string `json:"packages,omitempty"`
	Description string   `json:"description"`
}

// Debian suites the templates come from.
const (
	SuiteBookworm = "bookworm" // Debian 12
	SuiteTrixie   = "trixie"   // Debian 13
)

// templates is the catalogue. Versions checked against the suites:
// bookworm ships python3 3.11.2 and nodejs 18.19/18.20; trixie ships
// python3 3.13.5 and nodejs 20.19.
var templates = []Template{
	{Name: "minimal", Family: "minimal", Version: "1.35", Description: "busybox only (from the host's busybox-static): /bin/sh and the busybox applets"},
	{Name: "debian-12", Aliases: []string{"debian"}, Family: "debian", Version: "12", Suite: SuiteBookworm, Description: "Debian 12 (bookworm), minbase"},
	{Name: "debian-13", Family: "debian", Version: "13", Suite: SuiteTrixie, Description: "Debian 13 (trixie), minbase"},
	{Name: "python-3.11", Aliases: []string{"python"}, Family: "python", Version: "3.11", Suite: SuiteBookworm, Packages: []string{"python3", "python-is-python3"}, Description: "Debian 12 with Python 3.11 (python and python3)"},
	{Name: "python-3.13", Family: "python", Version: "3.13", Suite: SuiteTrixie, Packages: []string{"python3", "python-is-python3"}, Description: "Debian 13 with Python 3.13 (python and python3)"},
	{Name: "node-18", Aliases: []string{"node"}, Family: "node", Version: "18", Suite: SuiteBookworm, Packages: []string{"nodejs"}, Description: "Debian 12 with Node.js 18 (no npm; add it under packages)"},
	{Name: "node-20", Family: "node", Version: "20", Suite: SuiteTrixie, Packages: []string{"nodejs"}, Description: "Debian 13 with Node.js 20 (no npm; add it under packages)"},
}

// Templates returns the catalogue, in a stable order.
func Templates() []Template {
	out := make([]Template, len(templates))
	for i, t := range templates {
		t.Aliases = append([]string(nil), t.Aliases...)
		t.Packages = append([]string(nil), t.Packages...)
		out[i] = t
	}
	return out
}

// TemplateNames lists every name ResolveTemplate accepts, aliases first
// within each family.
func TemplateNames() []string {
	var out []string
	for _, t := range templates {
		out = append(out, t.Aliases...)
		out = append(out, t.Name)
	}
	return out
}

// UnknownTemplateError is returned for a template name that does not exist.
type UnknownTemplateError struct {
	Name string
	// Versions is set when the family exists but not the version (for
	// example python-3.12): the versions Debian does provide.
	Versions []string
}

func (e *UnknownTemplateError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "unknown template %q", e.Name)
	if len(e.Versions) > 0 {
		fam, _, _ := strings.Cut(e.Name, "-")
		fmt.Fprintf(&b, " (no Debian release this runtime builds from provides that version; %s versions: %s)", fam, strings.Join(e.Versions, ", "))
	}
	fmt.Fprintf(&b, "; available templates: %s", strings.Join(TemplateNames(), ", "))
	if fam, ver, ok := strings.Cut(e.Name, "-"); ok && ver != "" && len(e.Versions) > 0 {
		fmt.Fprintf(&b, "; or use an OCI image reference such as %s:%s-slim", fam, ver)
	}
	return b.String()
}

// ResolveTemplate maps a template name or alias to its template.
func ResolveTemplate(name string) (Template, error) {
	for _, t := range Templates() {
		if t.Name == name {
			return t, nil
		}
		for _, a := range t.Aliases {
			if a == name {
				return t, nil
			}
		}
	}
	e := &UnknownTemplateError{Name: name}
	fam, _, found := strings.Cut(name, "-")
	if found {
		for _, t := range templates {
			if t.Family == fam && t.Suite != "" {
				e.Versions = append(e.Versions, t.Name)
			}
		}
		sort.Strings(e.Versions)
	}
	return Template{}, e
}

// debian reports whether the template is built with mmdebstrap.
func (t Template) debian() bool { return t.Suite != "" }
