package decl

import (
	"context"
	"strconv"
	"strings"

	sitter "github.com/smacker/go-tree-sitter"
	"github.com/smacker/go-tree-sitter/typescript/typescript"
)

const tsAllowed = "export const NAME = mvm.app({...})(async () => ...) at the top level"

// tsNames: identifiers bound to the SDK module (namespace imports) and
// functions imported from it by name.
type tsNames struct {
	modules map[string]bool
	funcs   map[string]string
}

func isSDKModule(s string) bool {
	s = strings.Trim(s, "'\"")
	return s == "mvm-sdk" || s == "mvm" || s == "@mvm/sdk" || strings.HasSuffix(s, "/mvm-sdk")
}

func (x *extractor) tsImports(root *sitter.Node) tsNames {
	nm := tsNames{modules: map[string]bool{"mvm": true}, funcs: map[string]string{}}
	for i := 0; i < int(root.NamedChildCount()); i++ {
		n := root.NamedChild(i)
		if n.Type() != "import_statement" {
			continue
		}
		src := n.ChildByFieldName("source")
		if src == nil || !isSDKModule(x.text(src)) {
			continue
		}
		walk(n, func(c *sitter.Node) {
			switch c.Type() {
			case "namespace_import":
				if id := c.NamedChild(0); id != nil {
					nm.modules[x.text(id)] = true
				}
			case "import_specifier":
				name, al := c.ChildByFieldName("name"), c.ChildByFieldName("alias")
				if name == nil {
					return
				}
				local := x.text(name)
				if al != nil {
					local = x.text(al)
				}
				if x.text(name) == "mvm" || x.text(name) == "default" {
					nm.modules[local] = true
				} else {
					nm.funcs[local] = x.text(name)
				}
			case "import_clause":
				if id := c.NamedChild(0); id != nil && id.Type() == "identifier" {
					nm.modules[x.text(id)] = true // default import
				}
			}
		})
	}
	return nm
}

func (x *extractor) tsCallee(nm tsNames, fn *sitter.Node) string {
	if fn == nil {
		return ""
	}
	switch fn.Type() {
	case "member_expression":
		obj, prop := fn.ChildByFieldName("object"), fn.ChildByFieldName("property")
		if obj != nil && prop != nil && obj.Type() == "identifier" && nm.modules[x.text(obj)] {
			return x.text(prop)
		}
	case "identifier":
		return nm.funcs[x.text(fn)]
	}
	return ""
}

// camel maps the TypeScript spellings onto the helper names.
var camel = map[string]string{
	"localPath": "local_path", "nixPackages": "nix_packages", "debianPackages": "debian_packages",
	"pythonImage": "python_image", "nodeImage": "node_image", "ociImage": "oci_image", "entrypointFunction": "entrypoint_function",
}

func extractTypeScript(ctx context.Context, file string, src []byte) (*found, error) {
	x := &extractor{file: file, src: src}
	tree, err := x.parseChecked(ctx, typescript.GetLanguage(), "TypeScript")
	if err != nil {
		return nil, err
	}
	defer tree.Close()
	root := tree.RootNode()
	nm := x.tsImports(root)
	var apps []*found
	var appErr error
	walk(root, func(n *sitter.Node) {
		if appErr != nil || n.Type() != "call_expression" {
			return
		}
		inner := n.ChildByFieldName("function")
		if inner == nil || inner.Type() != "call_expression" || x.tsCallee(nm, inner.ChildByFieldName("function")) != "app" {
			// a bare mvm.app({...}) not applied to a function
			if x.tsCallee(nm, n.ChildByFieldName("function")) == "app" {
				if p := n.Parent(); p == nil || p.Type() != "call_expression" {
					appErr = x.errAt(pos(n), EAppTarget, tsAllowed, "mvm.app({...}) must be applied to a function: mvm.app({...})(async () => ...)")
				}
			}
			return
		}
		f := &found{Pos: pos(n), Lang: "node", Kwargs: map[string]*Value{}}
		// the function it wraps
		fargs := n.ChildByFieldName("arguments")
		if fargs == nil || fargs.NamedChildCount() != 1 {
			appErr = x.errAt(pos(n), EAppTarget, tsAllowed, "mvm.app({...}) takes exactly one function")
			return
		}
		switch t := fargs.NamedChild(0).Type(); t {
		case "arrow_function", "function_expression", "function", "identifier":
		default:
			appErr = x.errAt(pos(fargs.NamedChild(0)), EAppTarget, tsAllowed, "mvm.app({...}) wraps a %s; it must wrap a function", typeName(fargs.NamedChild(0)))
			return
		}
		decl := n.Parent()
		if decl == nil || decl.Type() != "variable_declarator" || decl.ChildByFieldName("value") == nil || !decl.ChildByFieldName("value").Equal(n) {
			appErr = x.errAt(pos(n), EAppTarget, tsAllowed, "mvm.app(...)(fn) must be the value of an exported const")
			return
		}
		lex := decl.Parent()
		exp := lex.Parent()
		if exp == nil || exp.Type() != "export_statement" || exp.Parent() == nil || exp.Parent().Type() != "program" {
			appErr = x.errAt(pos(n), EAppTarget, tsAllowed, "the const holding mvm.app(...)(fn) must be exported at the top level (export const NAME = ...), so the runtime can call it")
			return
		}
		f.FuncName = x.text(decl.ChildByFieldName("name"))
		args := inner.ChildByFieldName("arguments")
		switch {
		case args == nil || args.NamedChildCount() == 0:
		case args.NamedChildCount() == 1 && args.NamedChild(0).Type() == "object":
			v, err := x.tsValue(nm, args.NamedChild(0), 0)
			if err != nil {
				appErr = err
				return
			}
			for _, k := range v.Keys {
				f.Kwargs[k] = v.Dict[k]
				f.KwOrder = append(f.KwOrder, k)
			}
		default:
			appErr = x.errAt(pos(args), ENonLiteral, "one object literal: mvm.app({name: ..., image: ...})", "mvm.app takes one object literal")
			return
		}
		apps = append(apps, f)
	})
	if appErr != nil {
		return nil, appErr
	}
	return x.one(apps, tsAllowed)
}

func (x *extractor) tsString(n *sitter.Node) (string, error) {
	raw := x.text(n)
	if len(raw) < 2 {
		return "", x.errAt(pos(n), ESyntax, "", "bad string")
	}
	if n.Type() == "template_string" {
		for i := 0; i < int(n.NamedChildCount()); i++ {
			if n.NamedChild(i).Type() == "template_substitution" {
				return "", x.errAt(pos(n), ENonLiteral, "a string literal without ${...}", "a template string with ${...} is evaluated at run time")
			}
		}
	}
	s, err := unescape(raw[1:len(raw)-1], false)
	if err != nil {
		return "", x.errAt(pos(n), EBadArgument, "", "string literal: %v", err)
	}
	return s, nil
}

func (x *extractor) tsKey(n *sitter.Node) (string, error) {
	switch n.Type() {
	case "property_identifier":
		return x.text(n), nil
	case "string":
		return x.tsString(n)
	}
	return "", x.errAt(pos(n), ENonLiteral, "identifier or string keys", "computed keys are evaluated at run time")
}

func (x *extractor) tsValue(nm tsNames, n *sitter.Node, depth int) (*Value, error) {
	p, err := x.startValue(n, depth)
	if err != nil {
		return nil, err
	}
	elem := func(c *sitter.Node, d int) (*Value, error) { return x.tsValue(nm, c, d) }
	switch n.Type() {
	case "string", "template_string":
		s, err := x.tsString(n)
		if err != nil {
			return nil, err
		}
		return &Value{Kind: VStr, Str: s, Pos: p}, nil
	case "number":
		t := strings.ReplaceAll(x.text(n), "_", "")
		if i, err := strconv.ParseInt(t, 0, 64); err == nil {
			return &Value{Kind: VInt, Int: i, Pos: p}, nil
		}
		f, err := strconv.ParseFloat(t, 64)
		if err != nil {
			return nil, x.errAt(p, EBadArgument, "", "number %s: %v", clip(t), err)
		}
		if f == float64(int64(f)) && !strings.ContainsAny(t, ".eE") {
			return &Value{Kind: VInt, Int: int64(f), Pos: p}, nil
		}
		return &Value{Kind: VFloat, Float: f, Pos: p}, nil
	case "true", "false":
		return &Value{Kind: VBool, Bool: n.Type() == "true", Pos: p}, nil
	case "null", "undefined":
		return &Value{Kind: VNone, Pos: p}, nil
	case "unary_expression":
		op := n.ChildByFieldName("operator")
		arg := n.ChildByFieldName("argument")
		if op != nil && x.text(op) == "-" && arg != nil && arg.Type() == "number" {
			v, err := x.tsValue(nm, arg, depth+1)
			if err != nil {
				return nil, err
			}
			v.Int, v.Float, v.Pos = -v.Int, -v.Float, p
			return v, nil
		}
	case "parenthesized_expression", "as_expression", "satisfies_expression":
		if n.NamedChildCount() >= 1 {
			return x.tsValue(nm, n.NamedChild(0), depth+1)
		}
	case "array":
		return x.listValue(n, depth, elem)
	case "object":
		return x.dictValue(n, depth, dictSyntax{
			key:     x.tsKey,
			allowed: "{key: literal, ...}",
			notPair: "object entries must be key: value pairs (no shorthand or spread: they read variables)",
		}, elem)
	case "call_expression":
		fn := n.ChildByFieldName("function")
		h := x.tsCallee(nm, fn)
		if c, ok := camel[h]; ok {
			h = c
		}
		v, err := x.helperCall(n, fn, h)
		if err != nil {
			return nil, err
		}
		args := n.ChildByFieldName("arguments")
		for i := 0; args != nil && i < int(args.NamedChildCount()); i++ {
			a := args.NamedChild(i)
			if a.Type() == "comment" {
				continue
			}
			e, err := x.tsValue(nm, a, depth+1)
			if err != nil {
				return nil, err
			}
			v.Args = append(v.Args, e)
		}
		// A trailing object literal holds the options (no helper takes
		// an object positionally).
		if k := len(v.Args); k > 0 && v.Args[k-1].Kind == VDict {
			opts := v.Args[k-1]
			v.Args = v.Args[:k-1]
			for _, key := range opts.Keys {
				v.Kwargs[key] = opts.Dict[key]
				v.KwOrder = append(v.KwOrder, key)
			}
		}
		return v, nil
	}
	return nil, x.notLiteral(n)
}
