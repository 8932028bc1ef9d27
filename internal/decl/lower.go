package decl

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/ir"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// lowerer turns the found mvm.app into IR, reporting problems at the
// literal that caused them.
type lowerer struct {
	x *extractor
}

func (l *lowerer) err(v *Value, code, allowed, format string, a ...any) error {
	return l.x.errAt(v.Pos, code, allowed, format, a...)
}

// sig describes a helper's parameters: positional order, and which are
// required.
type sig struct {
	params   []string
	required []string
}

var sigs = map[string]sig{
	"local_path":          {params: []string{"path", "include", "exclude"}, required: []string{"path"}},
	"nix_packages":        {params: []string{"packages"}, required: []string{"packages"}},
	"debian_packages":     {params: []string{"packages", "release"}, required: []string{"packages"}},
	"python_image":        {params: []string{"version", "packages"}},
	"node_image":          {params: []string{"version"}},
	"template":            {params: []string{"name"}, required: []string{"name"}},
	"oci_image":           {params: []string{"ref"}, required: []string{"ref"}},
	"resources":           {params: []string{"cpu_cores", "memory_mb", "disk_mb"}},
	"network":             {params: []string{"mode", "allow", "ports"}},
	"secret":              {params: []string{"name"}, required: []string{"name"}},
	"entrypoint":          {params: []string{"command", "working_dir", "env"}, required: []string{"command"}},
	"entrypoint_function": {params: []string{"module", "function", "working_dir", "env", "warm"}},
	"hooks":               {params: []string{"before_start", "after_start", "before_stop"}},
}

// bind maps a helper call's arguments onto its parameter names.
func (l *lowerer) bind(v *Value) (map[string]*Value, error) {
	s := sigs[v.Helper]
	out := map[string]*Value{}
	if len(v.Args) > len(s.params) {
		return nil, l.err(v.Args[len(s.params)], EBadArgument, fmt.Sprintf("mvm.%s(%s)", v.Helper, strings.Join(s.params, ", ")), "mvm.%s takes at most %d positional argument(s)", v.Helper, len(s.params))
	}
	for i, a := range v.Args {
		out[s.params[i]] = a
	}
	for _, k := range v.KwOrder {
		known := false
		for _, p := range s.params {
			known = known || p == k
		}
		if !known {
			return nil, l.err(v.Kwargs[k], EUnknownArgument, fmt.Sprintf("mvm.%s(%s)", v.Helper, strings.Join(s.params, ", ")), "mvm.%s has no argument %q", v.Helper, k)
		}
		if _, dup := out[k]; dup {
			return nil, l.err(v.Kwargs[k], EBadArgument, "", "argument %s given twice", k)
		}
		out[k] = v.Kwargs[k]
	}
	for _, r := range s.required {
		if out[r] == nil {
			return nil, l.err(v, EMissingArgument, fmt.Sprintf("mvm.%s(%s)", v.Helper, strings.Join(s.params, ", ")), "mvm.%s needs %s", v.Helper, r)
		}
	}
	return out, nil
}

func (l *lowerer) str(v *Value, what string) (string, error) {
	if v.Kind != VStr {
		return "", l.err(v, EBadArgument, "a string", "%s must be a string, got %s", what, v.Kind)
	}
	return v.Str, nil
}

func (l *lowerer) integer(v *Value, what string) (int, error) {
	if v.Kind != VInt {
		return 0, l.err(v, EBadArgument, "an integer", "%s must be an integer, got %s", what, v.Kind)
	}
	if v.Int < -1<<31 || v.Int > 1<<31 {
		return 0, l.err(v, EBadArgument, "", "%s is out of range", what)
	}
	return int(v.Int), nil
}

func (l *lowerer) strs(v *Value, what string) ([]string, error) {
	if v.Kind != VList {
		return nil, l.err(v, EBadArgument, "a list of strings", "%s must be a list of strings, got %s", what, v.Kind)
	}
	out := []string{}
	for _, e := range v.List {
		s, err := l.str(e, what+" entries")
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func (l *lowerer) strMap(v *Value, what string) (map[string]string, error) {
	if v.Kind != VDict {
		return nil, l.err(v, EBadArgument, "a dict of strings", "%s must be a dict of strings, got %s", what, v.Kind)
	}
	out := map[string]string{}
	for _, k := range v.Keys {
		s, err := l.str(v.Dict[k], what+" values")
		if err != nil {
			return nil, err
		}
		out[k] = s
	}
	return out, nil
}

func (l *lowerer) argvList(v *Value, what string) ([][]string, error) {
	if v.Kind != VList {
		return nil, l.err(v, EBadArgument, "a list of argv lists: [[\"python\", \"x.py\"]]", "%s must be a list of argv lists", what)
	}
	out := [][]string{}
	for _, e := range v.List {
		a, err := l.strs(e, what+" argv")
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func (l *lowerer) call(v *Value, want ...string) (map[string]*Value, error) {
	ok := false
	for _, w := range want {
		ok = ok || v.Helper == w
	}
	if v.Kind != VCall || !ok {
		names := make([]string, len(want))
		for i, w := range want {
			names[i] = "mvm." + w + "(...)"
		}
		got := v.Kind
		if v.Kind == VCall {
			got = "mvm." + v.Helper + "(...)"
		}
		return nil, l.err(v, EBadArgument, strings.Join(names, " or "), "expected %s, got %s", strings.Join(names, " or "), got)
	}
	return l.bind(v)
}

var moduleNameRe = lazyre.New(`^[A-Za-z_][A-Za-z0-9_]*$`)

var appParams = []string{"name", "source", "image", "resources", "network", "env", "entrypoint", "entrypoints", "hooks", "before_start", "after_start", "before_stop"}

// lower builds the workload of a found app declared in file.
func (l *lowerer) lower(f *found) (*ir.Workload, error) {
	w := &ir.Workload{SchemaVersion: ir.SchemaVersion, Language: f.Lang}
	stem := strings.TrimSuffix(filepath.Base(l.x.file), filepath.Ext(l.x.file))
	appSig := "mvm.app(" + strings.Join(appParams, ", ") + ")"
	for _, k := range f.KwOrder {
		known := false
		for _, p := range appParams {
			known = known || p == k
		}
		if !known {
			return nil, l.err(f.Kwargs[k], EUnknownArgument, appSig, "mvm.app has no argument %q", k)
		}
	}
	get := func(k string) *Value { return f.Kwargs[k] }
	var err error
	if v := get("name"); v != nil {
		if w.Name, err = l.str(v, "name"); err != nil {
			return nil, err
		}
	} else {
		w.Name = strings.ReplaceAll(strings.ToLower(f.FuncName), "_", "-")
	}
	if v := get("source"); v != nil {
		a, err := l.call(v, "local_path")
		if err != nil {
			return nil, err
		}
		w.Source.Kind = "local_path"
		if w.Source.Path, err = l.str(a["path"], "path"); err != nil {
			return nil, err
		}
		if a["include"] != nil {
			if w.Source.Include, err = l.strs(a["include"], "include"); err != nil {
				return nil, err
			}
		}
		if a["exclude"] != nil {
			if w.Source.Exclude, err = l.strs(a["exclude"], "exclude"); err != nil {
				return nil, err
			}
		}
	}
	v := get("image")
	if v == nil {
		return nil, l.x.errAt(f.Pos, EMissingArgument, "image=mvm.python_image(\"3.13\") / mvm.node_image(\"20\") / mvm.nix_packages([...]) / mvm.debian_packages([...]) / mvm.template(NAME) / mvm.oci_image(REF)", "mvm.app needs an image")
	}
	if w.Image, err = l.image(v); err != nil {
		return nil, err
	}
	if v := get("resources"); v != nil {
		a, err := l.call(v, "resources")
		if err != nil {
			return nil, err
		}
		for k, dst := range map[string]*int{"cpu_cores": &w.Resources.CPUCores, "memory_mb": &w.Resources.MemoryMB, "disk_mb": &w.Resources.DiskMB} {
			if a[k] != nil {
				if *dst, err = l.integer(a[k], k); err != nil {
					return nil, err
				}
			}
		}
	}
	if v := get("network"); v != nil {
		a, err := l.call(v, "network")
		if err != nil {
			return nil, err
		}
		w.Network.Mode = ir.NetDeny
		if a["mode"] != nil {
			if w.Network.Mode, err = l.str(a["mode"], "mode"); err != nil {
				return nil, err
			}
		}
		if a["allow"] != nil {
			if w.Network.Allow, err = l.strs(a["allow"], "allow"); err != nil {
				return nil, err
			}
		}
		if p := a["ports"]; p != nil {
			if p.Kind != VList {
				return nil, l.err(p, EBadArgument, "ports=[8080, {\"guest\": 80, \"host\": 8080}]", "ports must be a list")
			}
			for _, e := range p.List {
				switch e.Kind {
				case VInt:
					w.Network.Ports = append(w.Network.Ports, ir.Port{Guest: int(e.Int)})
				case VDict:
					var pt ir.Port
					for _, k := range e.Keys {
						n, err := l.integer(e.Dict[k], k)
						if err != nil {
							return nil, err
						}
						switch k {
						case "guest":
							pt.Guest = n
						case "host":
							pt.Host = n
						default:
							return nil, l.err(e.Dict[k], EUnknownArgument, "guest, host", "a port has no %q", k)
						}
					}
					w.Network.Ports = append(w.Network.Ports, pt)
				default:
					return nil, l.err(e, EBadArgument, "ports=[8080, {\"guest\": 80, \"host\": 8080}]", "a port is an integer or {\"guest\": N, \"host\": M}")
				}
			}
		}
	}
	if v := get("env"); v != nil {
		if v.Kind != VDict {
			return nil, l.err(v, EBadArgument, "env={\"KEY\": \"value\", \"TOKEN\": mvm.secret(\"name\")}", "env must be a dict")
		}
		w.Env = map[string]ir.EnvVal{}
		for _, k := range v.Keys {
			e := v.Dict[k]
			switch {
			case e.Kind == VStr:
				w.Env[k] = ir.EnvVal{Kind: "literal", Value: e.Str}
			case e.Kind == VCall && e.Helper == "secret":
				a, err := l.bind(e)
				if err != nil {
					return nil, err
				}
				name, err := l.str(a["name"], "secret name")
				if err != nil {
					return nil, err
				}
				w.Env[k] = ir.EnvVal{Kind: "secret", Name: name}
			default:
				return nil, l.err(e, EBadArgument, "a string or mvm.secret(NAME)", "env %s must be a string or mvm.secret(NAME)", k)
			}
		}
	}
	var eps []*Value
	if v := get("entrypoint"); v != nil {
		eps = append(eps, v)
	}
	if v := get("entrypoints"); v != nil {
		if v.Kind != VList {
			return nil, l.err(v, EBadArgument, "entrypoints=[mvm.entrypoint(...), ...]", "entrypoints must be a list")
		}
		eps = append(eps, v.List...)
	}
	for _, v := range eps {
		a, err := l.call(v, "entrypoint", "entrypoint_function")
		if err != nil {
			return nil, err
		}
		e := ir.Entrypoint{Kind: ir.EntryCommand}
		if v.Helper == "entrypoint_function" {
			e = ir.Entrypoint{Kind: ir.EntryFunction, Module: stem, Function: f.FuncName}
			if a["module"] != nil {
				if e.Module, err = l.str(a["module"], "module"); err != nil {
					return nil, err
				}
			}
			if a["function"] != nil {
				if e.Function, err = l.str(a["function"], "function"); err != nil {
					return nil, err
				}
			}
			if b := a["warm"]; b != nil {
				if b.Kind != VBool {
					return nil, l.err(b, EBadArgument, "True or False", "warm must be a boolean")
				}
				e.Warm = b.Bool
			}
		} else if e.Command, err = l.strs(a["command"], "command"); err != nil {
			return nil, err
		}
		if a["working_dir"] != nil {
			if e.WorkingDir, err = l.str(a["working_dir"], "working_dir"); err != nil {
				return nil, err
			}
		}
		if a["env"] != nil {
			if e.Env, err = l.strMap(a["env"], "env"); err != nil {
				return nil, err
			}
		}
		w.Entrypoints = append(w.Entrypoints, e)
	}
	if len(eps) == 0 {
		// the decorated function is the default entrypoint
		if !moduleNameRe.MatchString(stem) {
			return nil, l.x.errAt(f.Pos, EBadArgument, "a file name that is a module name (letters, digits, _), or entrypoint=mvm.entrypoint_function(module=..., function=...)", "the file name %q is not an importable module name, so the function cannot be called", filepath.Base(l.x.file))
		}
		w.Entrypoints = []ir.Entrypoint{{Kind: ir.EntryFunction, Module: stem, Function: f.FuncName}}
	}
	if v := get("hooks"); v != nil {
		a, err := l.call(v, "hooks")
		if err != nil {
			return nil, err
		}
		if err := l.hooks(a, &w.Hooks); err != nil {
			return nil, err
		}
	}
	if err := l.hooks(map[string]*Value{"before_start": get("before_start"), "after_start": get("after_start"), "before_stop": get("before_stop")}, &w.Hooks); err != nil {
		return nil, err
	}
	return w, nil
}

func (l *lowerer) hooks(a map[string]*Value, h *ir.Hooks) error {
	for k, dst := range map[string]*[][]string{"before_start": &h.BeforeStart, "after_start": &h.AfterStart, "before_stop": &h.BeforeStop} {
		if a[k] == nil {
			continue
		}
		lst, err := l.argvList(a[k], k)
		if err != nil {
			return err
		}
		*dst = append(*dst, lst...)
	}
	return nil
}

func (l *lowerer) image(v *Value) (ir.Image, error) {
	a, err := l.call(v, "nix_packages", "debian_packages", "python_image", "node_image", "template", "oci_image")
	if err != nil {
		return ir.Image{}, err
	}
	im := ir.Image{Kind: v.Helper}
	if a["packages"] != nil {
		if im.Packages, err = l.strs(a["packages"], "packages"); err != nil {
			return im, err
		}
	}
	switch v.Helper {
	case "debian_packages":
		im.Release = 12
		if a["release"] != nil {
			if im.Release, err = l.integer(a["release"], "release"); err != nil {
				return im, err
			}
		}
	case "python_image", "node_image":
		im.Version = map[string]string{"python_image": "3.13", "node_image": "20"}[v.Helper]
		if r := a["version"]; r != nil {
			switch r.Kind {
			case VStr:
				im.Version = r.Str
			case VInt:
				im.Version = fmt.Sprint(r.Int)
			default:
				return im, l.err(r, EBadArgument, "a version string such as \"3.13\"", "version must be a string")
			}
		}
	case "template":
		if im.Name, err = l.str(a["name"], "name"); err != nil {
			return im, err
		}
	case "oci_image":
		if im.Ref, err = l.str(a["ref"], "ref"); err != nil {
			return im, err
		}
	}
	return im, nil
}
