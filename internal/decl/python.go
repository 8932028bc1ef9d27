package decl

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	sitter "github.com/smacker/go-tree-sitter"
	"github.com/smacker/go-tree-sitter/python"
)

// parseTimeout bounds tree-sitter on hostile input.
const parseTimeout = 10 * time.Second

// found is the one mvm.app of a file.
type found struct {
	Kwargs   map[string]*Value
	KwOrder  []string
	FuncName string
	Pos      Pos
	Lang     string // ir.LangPython / ir.LangNode
}

type extractor struct {
	file string
	src  []byte
}

func (x *extractor) errAt(p Pos, code, allowed, format string, a ...any) *Error {
	return &Error{File: x.file, Line: p.Line, Col: p.Col, Code: code, Msg: fmt.Sprintf(format, a...), Allowed: allowed}
}

func pos(n *sitter.Node) Pos {
	p := n.StartPoint()
	return Pos{Line: int(p.Row) + 1, Col: int(p.Column) + 1}
}

func (x *extractor) text(n *sitter.Node) string { return n.Content(x.src) }

func parse(ctx context.Context, lang *sitter.Language, src []byte) (*sitter.Tree, error) {
	p := sitter.NewParser()
	defer p.Close()
	p.SetLanguage(lang)
	ctx, cancel := context.WithTimeout(ctx, parseTimeout)
	defer cancel()
	return p.ParseCtx(ctx, nil, src)
}

// parseChecked parses the extractor's source as lang (named in messages):
// the source caps first, then tree-sitter under its deadline; the first
// syntax error is E_SYNTAX at its position. The caller closes the tree.
func (x *extractor) parseChecked(ctx context.Context, lang *sitter.Language, name string) (*sitter.Tree, error) {
	if err := x.checkSource(); err != nil {
		return nil, err
	}
	tree, err := parse(ctx, lang, x.src)
	if err != nil {
		return nil, x.errAt(Pos{1, 1}, ESyntax, "", "parse: %v", err)
	}
	if root := tree.RootNode(); root.HasError() {
		e := firstError(root)
		err := x.errAt(pos(e), ESyntax, "", "%s syntax error near %q", name, clip(x.text(e)))
		tree.Close() // after the last use of its nodes
		return nil, err
	}
	return tree, nil
}

// firstError finds the first ERROR or MISSING node.
func firstError(root *sitter.Node) *sitter.Node {
	stack := []*sitter.Node{root}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if n.IsError() || n.IsMissing() {
			return n
		}
		if !n.HasError() {
			continue
		}
		for i := int(n.ChildCount()) - 1; i >= 0; i-- {
			stack = append(stack, n.Child(i))
		}
	}
	return root
}

// walk visits every node, iteratively (deeply nested input is fine).
func walk(root *sitter.Node, f func(*sitter.Node)) {
	stack := []*sitter.Node{root}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		f(n)
		for i := int(n.NamedChildCount()) - 1; i >= 0; i-- {
			stack = append(stack, n.NamedChild(i))
		}
	}
}

func (x *extractor) checkSource() error {
	if len(x.src) > MaxSourceBytes {
		return x.errAt(Pos{1, 1}, ETooLarge, "", "file is %d bytes; declarations are at most %d", len(x.src), MaxSourceBytes)
	}
	if !utf8.Valid(x.src) {
		return x.errAt(Pos{1, 1}, ESyntax, "", "file is not UTF-8")
	}
	return nil
}

// pyNames tracks how mvm is imported in a Python module.
type pyNames struct {
	modules map[string]bool   // names bound to the mvm module
	funcs   map[string]string // local name -> helper imported from mvm
}

func (x *extractor) pyImports(root *sitter.Node) pyNames {
	nm := pyNames{modules: map[string]bool{"mvm": true}, funcs: map[string]string{}}
	for i := 0; i < int(root.NamedChildCount()); i++ {
		n := root.NamedChild(i)
		switch n.Type() {
		case "import_statement":
			for j := 0; j < int(n.NamedChildCount()); j++ {
				c := n.NamedChild(j)
				if c.Type() == "aliased_import" {
					if name := c.ChildByFieldName("name"); name != nil && x.text(name) == "mvm" {
						if al := c.ChildByFieldName("alias"); al != nil {
							nm.modules[x.text(al)] = true
						}
					}
				}
			}
		case "import_from_statement":
			mod := n.ChildByFieldName("module_name")
			if mod == nil || x.text(mod) != "mvm" {
				continue
			}
			for j := 0; j < int(n.NamedChildCount()); j++ {
				c := n.NamedChild(j)
				if c.Equal(mod) {
					continue
				}
				switch c.Type() {
				case "dotted_name":
					nm.funcs[x.text(c)] = x.text(c)
				case "aliased_import":
					if name, al := c.ChildByFieldName("name"), c.ChildByFieldName("alias"); name != nil && al != nil {
						nm.funcs[x.text(al)] = x.text(name)
					}
				}
			}
		}
	}
	return nm
}

// pyCallee returns the mvm function a call's function expression names
// ("app", "local_path", ...) or "".
func (x *extractor) pyCallee(nm pyNames, fn *sitter.Node) string {
	switch fn.Type() {
	case "attribute":
		obj, attr := fn.ChildByFieldName("object"), fn.ChildByFieldName("attribute")
		if obj != nil && attr != nil && obj.Type() == "identifier" && nm.modules[x.text(obj)] {
			return x.text(attr)
		}
	case "identifier":
		return nm.funcs[x.text(fn)]
	}
	return ""
}

func extractPython(ctx context.Context, file string, src []byte) (*found, error) {
	x := &extractor{file: file, src: src}
	tree, err := x.parseChecked(ctx, python.GetLanguage(), "Python")
	if err != nil {
		return nil, err
	}
	defer tree.Close()
	root := tree.RootNode()
	nm := x.pyImports(root)
	var apps []*found
	var appErr error
	walk(root, func(n *sitter.Node) {
		if n.Type() != "decorator" || appErr != nil {
			return
		}
		expr := n.NamedChild(0)
		if expr == nil {
			return
		}
		call := expr
		fn := expr
		if expr.Type() == "call" {
			fn = expr.ChildByFieldName("function")
		} else {
			call = nil
		}
		if fn == nil || x.pyCallee(nm, fn) != "app" {
			return
		}
		f := &found{Pos: pos(n), Lang: "python", Kwargs: map[string]*Value{}}
		def := n.Parent()
		target := def.ChildByFieldName("definition")
		if target == nil || target.Type() != "function_definition" {
			appErr = x.errAt(pos(n), EAppTarget, "@mvm.app on a module-level def", "@mvm.app decorates a %s; it must decorate a function", typeName(target))
			return
		}
		if p := def.Parent(); p == nil || p.Type() != "module" {
			appErr = x.errAt(pos(n), EAppTarget, "@mvm.app on a module-level def", "@mvm.app must decorate a function at the top level of the module, not inside a %s", typeName(p))
			return
		}
		if name := target.ChildByFieldName("name"); name != nil {
			f.FuncName = x.text(name)
		}
		if call != nil {
			args := call.ChildByFieldName("arguments")
			if args != nil {
				for i := 0; i < int(args.NamedChildCount()); i++ {
					a := args.NamedChild(i)
					if a.Type() == "comment" {
						continue
					}
					if a.Type() != "keyword_argument" {
						appErr = x.errAt(pos(a), ENonLiteral, "keyword arguments: mvm.app(name=..., image=...)", "mvm.app takes keyword arguments only")
						return
					}
					k := x.text(a.ChildByFieldName("name"))
					if _, dup := f.Kwargs[k]; dup {
						appErr = x.errAt(pos(a), EBadArgument, "", "argument %s given twice", k)
						return
					}
					v, err := x.pyValue(nm, a.ChildByFieldName("value"), 0)
					if err != nil {
						appErr = err
						return
					}
					f.Kwargs[k] = v
					f.KwOrder = append(f.KwOrder, k)
				}
			}
		}
		apps = append(apps, f)
	})
	if appErr != nil {
		return nil, appErr
	}
	return x.one(apps, "@mvm.app(...) on one top-level function")
}

func (x *extractor) one(apps []*found, allowed string) (*found, error) {
	switch len(apps) {
	case 0:
		return nil, x.errAt(Pos{1, 1}, ENoApp, allowed, "no mvm.app declaration in this file")
	case 1:
		return apps[0], nil
	}
	return nil, x.errAt(apps[1].Pos, EMultipleApps, "one mvm.app per file (every app is one microVM)", "a second mvm.app declaration (the first is at line %d)", apps[0].Pos.Line)
}

func typeName(n *sitter.Node) string {
	if n == nil {
		return "nothing"
	}
	return strings.ReplaceAll(n.Type(), "_", " ")
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

func (x *extractor) pyValue(nm pyNames, n *sitter.Node, depth int) (*Value, error) {
	p, err := x.startValue(n, depth)
	if err != nil {
		return nil, err
	}
	elem := func(c *sitter.Node, d int) (*Value, error) { return x.pyValue(nm, c, d) }
	switch n.Type() {
	case "string", "concatenated_string":
		s, err := x.pyString(n)
		if err != nil {
			return nil, err
		}
		return &Value{Kind: VStr, Str: s, Pos: p}, nil
	case "integer":
		i, err := parseInt(x.text(n))
		if err != nil {
			return nil, x.errAt(p, EBadArgument, "", "integer %s: %v", clip(x.text(n)), err)
		}
		return &Value{Kind: VInt, Int: i, Pos: p}, nil
	case "float":
		f, err := strconv.ParseFloat(strings.ReplaceAll(x.text(n), "_", ""), 64)
		if err != nil {
			return nil, x.errAt(p, EBadArgument, "", "number %s: %v", clip(x.text(n)), err)
		}
		return &Value{Kind: VFloat, Float: f, Pos: p}, nil
	case "true", "false":
		return &Value{Kind: VBool, Bool: n.Type() == "true", Pos: p}, nil
	case "none":
		return &Value{Kind: VNone, Pos: p}, nil
	case "unary_operator":
		op := n.Child(0)
		arg := n.ChildByFieldName("argument")
		if op != nil && x.text(op) == "-" && arg != nil && arg.Type() == "integer" {
			v, err := x.pyValue(nm, arg, depth+1)
			if err != nil {
				return nil, err
			}
			v.Int, v.Pos = -v.Int, p
			return v, nil
		}
	case "parenthesized_expression":
		if n.NamedChildCount() == 1 {
			return x.pyValue(nm, n.NamedChild(0), depth+1)
		}
	case "list", "tuple":
		return x.listValue(n, depth, elem)
	case "dictionary":
		return x.dictValue(n, depth, pyDict(x), elem)
	case "call":
		fn := n.ChildByFieldName("function")
		h := ""
		if fn != nil {
			h = x.pyCallee(nm, fn)
		}
		v, err := x.helperCall(n, fn, h)
		if err != nil {
			return nil, err
		}
		args := n.ChildByFieldName("arguments")
		for i := 0; args != nil && i < int(args.NamedChildCount()); i++ {
			a := args.NamedChild(i)
			switch a.Type() {
			case "comment":
				continue
			case "keyword_argument":
				k := x.text(a.ChildByFieldName("name"))
				if _, dup := v.Kwargs[k]; dup {
					return nil, x.errAt(pos(a), EBadArgument, "", "argument %s given twice", k)
				}
				e, err := x.pyValue(nm, a.ChildByFieldName("value"), depth+1)
				if err != nil {
					return nil, err
				}
				v.Kwargs[k] = e
				v.KwOrder = append(v.KwOrder, k)
			case "list_splat", "dictionary_splat":
				return nil, x.errAt(pos(a), ENonLiteral, literalHint, "*/** unpacking is evaluated at run time")
			default:
				if len(v.Kwargs) > 0 {
					return nil, x.errAt(pos(a), ESyntax, "", "positional argument after keyword argument")
				}
				e, err := x.pyValue(nm, a, depth+1)
				if err != nil {
					return nil, err
				}
				v.Args = append(v.Args, e)
			}
		}
		return v, nil
	}
	return nil, x.notLiteral(n)
}

// pyDict: string-literal keys, no ** unpacking.
func pyDict(x *extractor) dictSyntax {
	return dictSyntax{
		key: func(kn *sitter.Node) (string, error) {
			if kn.Type() != "string" && kn.Type() != "concatenated_string" {
				return "", x.errAt(pos(kn), ENonLiteral, "string keys", "dict keys must be string literals")
			}
			return x.pyString(kn)
		},
		allowed: "{\"KEY\": literal, ...}",
		notPair: "dict entries must be \"key\": value pairs (no ** unpacking)",
	}
}

func parseInt(s string) (int64, error) {
	s = strings.ReplaceAll(s, "_", "")
	if len(s) > 1 && s[0] == '0' && (s[1] >= '0' && s[1] <= '9') {
		return 0, fmt.Errorf("leading zero")
	}
	return strconv.ParseInt(s, 0, 64)
}

// pyString decodes a (possibly concatenated) Python string literal.
// f-strings and bytes are refused.
func (x *extractor) pyString(n *sitter.Node) (string, error) {
	if n.Type() == "concatenated_string" {
		var b strings.Builder
		for i := 0; i < int(n.NamedChildCount()); i++ {
			s, err := x.pyString(n.NamedChild(i))
			if err != nil {
				return "", err
			}
			b.WriteString(s)
		}
		return b.String(), nil
	}
	if n.Type() != "string" {
		return "", x.errAt(pos(n), ENonLiteral, "a string literal", "%s is not a string literal", typeName(n))
	}
	raw := x.text(n)
	i := 0
	for i < len(raw) && raw[i] != '\'' && raw[i] != '"' {
		i++
	}
	prefix := strings.ToLower(raw[:i])
	if strings.Contains(prefix, "f") {
		return "", x.errAt(pos(n), ENonLiteral, "a plain string literal \"...\"", "an f-string is evaluated at run time")
	}
	if strings.Contains(prefix, "b") {
		return "", x.errAt(pos(n), EBadArgument, "a str literal", "bytes literals are not strings")
	}
	body := raw[i:]
	if len(body) < 2 {
		return "", x.errAt(pos(n), ESyntax, "", "malformed string literal")
	}
	q := body[:1]
	if strings.HasPrefix(body, q+q+q) && len(body) >= 6 {
		body = body[3 : len(body)-3]
	} else if len(body) >= 2 {
		body = body[1 : len(body)-1]
	}
	if strings.Contains(prefix, "r") {
		return body, nil
	}
	s, err := unescape(body, true)
	if err != nil {
		return "", x.errAt(pos(n), EBadArgument, "", "string literal: %v", err)
	}
	return s, nil
}

// unescape decodes backslash escapes common to Python and JavaScript.
func unescape(s string, python bool) (string, error) {
	if !strings.Contains(s, "\\") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		i++
		if i >= len(s) {
			return "", fmt.Errorf("trailing backslash")
		}
		switch e := s[i]; e {
		case '\n':
		case '\\', '\'', '"', '`':
			b.WriteByte(e)
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case '0':
			b.WriteByte(0)
		case 'a':
			b.WriteByte(7)
		case 'b':
			b.WriteByte(8)
		case 'f':
			b.WriteByte(12)
		case 'v':
			b.WriteByte(11)
		case 'x', 'u', 'U':
			n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[e]
			if !python && e == 'u' && i+1 < len(s) && s[i+1] == '{' {
				end := strings.IndexByte(s[i:], '}')
				if end < 0 {
					return "", fmt.Errorf("bad \\u{...} escape")
				}
				r, err := strconv.ParseUint(s[i+2:i+end], 16, 32)
				if err != nil || !utf8.ValidRune(rune(r)) {
					return "", fmt.Errorf("bad \\u{...} escape")
				}
				b.WriteRune(rune(r))
				i += end
				continue
			}
			if i+1+n > len(s) {
				return "", fmt.Errorf("short \\%c escape", e)
			}
			r, err := strconv.ParseUint(s[i+1:i+1+n], 16, 32)
			if err != nil || !utf8.ValidRune(rune(r)) {
				return "", fmt.Errorf("bad \\%c escape", e)
			}
			b.WriteRune(rune(r))
			i += n
		default:
			if python {
				b.WriteByte('\\')
				b.WriteByte(e)
			} else {
				b.WriteByte(e)
			}
		}
	}
	return b.String(), nil
}
