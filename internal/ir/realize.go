package ir

import (
	"fmt"
	"sort"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/image"
)

// NixEntry is one row of the closed table that realises nix_packages on
// Debian: no Nix store is reachable from this runtime, so a Nix attribute
// name is accepted only when a Debian release ships that exact version.
type NixEntry struct {
	Name    string `json:"name"`              // Nix attribute, e.g. "python313"
	Debian  string `json:"debian,omitempty"`  // Debian package ("" = in every image already)
	Release int    `json:"release,omitempty"` // 12 or 13 when the version pins the release; 0 = any
	Runtime string `json:"runtime,omitempty"` // template family it selects: python, node
}

// NixTable is the closed table (docs/workload-ir.md lists it).
var NixTable = []NixEntry{
	{Name: "python311", Debian: "python3", Release: 12, Runtime: "python"},
	{Name: "python313", Debian: "python3", Release: 13, Runtime: "python"},
	{Name: "nodejs_18", Debian: "nodejs", Release: 12, Runtime: "node"},
	{Name: "nodejs_20", Debian: "nodejs", Release: 13, Runtime: "node"},
	{Name: "bash"}, {Name: "coreutils"},
	{Name: "cacert", Debian: "ca-certificates"},
	{Name: "curl", Debian: "curl"},
	{Name: "git", Debian: "git"},
	{Name: "jq", Debian: "jq"},
	{Name: "sqlite", Debian: "sqlite3"},
}

// Realization is how an image is built here: an mvm template plus extra
// Debian packages, or an OCI image (pulled at build).
type Realization struct {
	Template string   `json:"template,omitempty"`
	Packages []string `json:"packages,omitempty"`
	OCIRef   string   `json:"oci_ref,omitempty"`
}

// Versions this runtime can build, per image helper.
var (
	PythonVersions = []string{"3.11", "3.13"}
	NodeVersions   = []string{"18", "20"}
)

func nixNames(runtime string) []string {
	var out []string
	for _, e := range NixTable {
		if runtime == "" || e.Runtime == runtime {
			out = append(out, e.Name)
		}
	}
	return out
}

func unavailable(format string, a ...any) error {
	return &Error{Code: EImageUnavailable, Path: "image", Msg: fmt.Sprintf(format, a...)}
}

// Realize maps the workload's image onto a template and packages, or
// fails with E_IMAGE_UNAVAILABLE naming the versions that exist and the
// helper to use. It runs at build time, not at compile time.
func Realize(im Image) (Realization, error) {
	switch im.Kind {
	case ImageNixPackages:
		return realizeNix(im.Packages)
	case ImageDebianPackages:
		return Realization{Template: fmt.Sprintf("debian-%d", im.Release), Packages: im.Packages}, checkTemplate(fmt.Sprintf("debian-%d", im.Release))
	case ImagePython:
		t := "python-" + im.Version
		if err := checkTemplate(t); err != nil {
			return Realization{}, unavailable("python_image(%q): no Debian release this runtime builds from ships Python %s; versions that exist: %s (mvm.python_image(\"3.13\")), or any Python as an OCI image: mvm.oci_image(\"python:%s-slim\")", im.Version, im.Version, strings.Join(PythonVersions, ", "), im.Version)
		}
		return Realization{Template: t, Packages: im.Packages}, nil
	case ImageNode:
		t := "node-" + im.Version
		if err := checkTemplate(t); err != nil {
			return Realization{}, unavailable("node_image(%q): no Debian release this runtime builds from ships Node.js %s; versions that exist: %s (mvm.node_image(\"20\")), or any Node.js as an OCI image: mvm.oci_image(\"node:%s-slim\")", im.Version, im.Version, strings.Join(NodeVersions, ", "), im.Version)
		}
		return Realization{Template: t}, nil
	case ImageTemplate:
		if err := checkTemplate(im.Name); err != nil {
			return Realization{}, unavailable("template(%q): %v", im.Name, err)
		}
		return Realization{Template: im.Name}, nil
	case ImageOCI:
		return Realization{OCIRef: im.Ref}, nil
	}
	return Realization{}, unavailable("image kind %q cannot be built", im.Kind)
}

func checkTemplate(name string) error {
	_, err := image.ResolveTemplate(name)
	return err
}

func realizeNix(names []string) (Realization, error) {
	byName := map[string]NixEntry{}
	for _, e := range NixTable {
		byName[e.Name] = e
	}
	var release int
	var releaseBy, runtime string
	pkgs := map[string]bool{}
	for _, n := range names {
		e, ok := byName[n]
		if !ok {
			return Realization{}, unavailable("%s", nixUnknownMsg(n))
		}
		if e.Release != 0 {
			if release != 0 && release != e.Release {
				return Realization{}, unavailable("nix_packages %s and %s: no Debian release ships both versions (%s is Debian %d, %s is Debian %d); pick versions of one release", releaseBy, n, releaseBy, release, n, e.Release)
			}
			release, releaseBy = e.Release, n
		}
		if e.Runtime != "" {
			if runtime != "" && runtime != e.Runtime {
				// python and node together: keep the first as the template, the other as a package
				pkgs[e.Debian] = true
				continue
			}
			runtime = e.Runtime
			continue
		}
		if e.Debian != "" {
			pkgs[e.Debian] = true
		}
	}
	if release == 0 {
		release = 12
	}
	tmpl := fmt.Sprintf("debian-%d", release)
	switch runtime {
	case "python":
		tmpl = map[int]string{12: "python-3.11", 13: "python-3.13"}[release]
	case "node":
		tmpl = map[int]string{12: "node-18", 13: "node-20"}[release]
	}
	out := Realization{Template: tmpl}
	for p := range pkgs {
		out.Packages = append(out.Packages, p)
	}
	sort.Strings(out.Packages)
	return out, nil
}

func nixUnknownMsg(n string) string {
	low := strings.ToLower(n)
	switch {
	case strings.HasPrefix(low, "python"):
		return fmt.Sprintf("nix package %q cannot be provided: no Nix store is reachable here, and no Debian release this runtime builds from ships that Python. Python versions that exist: %s (Debian 12 / 13). Use mvm.nix_packages([\"python313\"]) or mvm.python_image(\"3.13\"), or an OCI image such as mvm.oci_image(\"python:3.12-slim\")", n, strings.Join(nixNames("python"), ", "))
	case strings.HasPrefix(low, "node"):
		return fmt.Sprintf("nix package %q cannot be provided: no Nix store is reachable here, and no Debian release this runtime builds from ships that Node.js. Node.js versions that exist: %s (Debian 12 / 13). Use mvm.nix_packages([\"nodejs_20\"]) or mvm.node_image(\"20\"), or an OCI image such as mvm.oci_image(\"node:22-slim\")", n, strings.Join(nixNames("node"), ", "))
	}
	return fmt.Sprintf("nix package %q is not in the table of Nix names mvm realises from Debian (%s); no Nix store is reachable here. For other software use mvm.debian_packages([...], release=12|13)", n, strings.Join(nixNames(""), ", "))
}
