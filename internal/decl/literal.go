package decl

import sitter "github.com/smacker/go-tree-sitter"

// The literal forms Python and TypeScript share: lists (list, tuple,
// array), dicts made of "pair" children (dict, object), calls of a helper,
// and the refusal of anything else. Each language's value function reads
// its own scalars and passes itself in for the elements.

// elemFunc reads one element at the given depth.
type elemFunc func(n *sitter.Node, depth int) (*Value, error)

// startValue checks a value node before it is read: present, and not
// nested deeper than maxDepth.
func (x *extractor) startValue(n *sitter.Node, depth int) (Pos, error) {
	if n == nil {
		return Pos{1, 1}, x.errAt(Pos{1, 1}, ESyntax, "", "missing value")
	}
	p := pos(n)
	if depth > maxDepth {
		return p, x.errAt(p, ETooLarge, "", "literal nested deeper than %d levels", maxDepth)
	}
	return p, nil
}

// listValue reads the elements of a list literal (comments skipped).
func (x *extractor) listValue(n *sitter.Node, depth int, elem elemFunc) (*Value, error) {
	v := &Value{Kind: VList, Pos: pos(n)}
	for i := 0; i < int(n.NamedChildCount()); i++ {
		c := n.NamedChild(i)
		if c.Type() == "comment" {
			continue
		}
		e, err := elem(c, depth+1)
		if err != nil {
			return nil, err
		}
		v.List = append(v.List, e)
	}
	return v, nil
}

// dictSyntax is how a language spells a dict literal.
type dictSyntax struct {
	key     func(*sitter.Node) (string, error) // a pair's key, or why it is not a literal
	allowed string                             // the entry form allowed, for the refusal of others
	notPair string                             // why an entry that is no pair is refused
}

// dictValue reads a dict literal of "pair" children: keys in order, none
// twice.
func (x *extractor) dictValue(n *sitter.Node, depth int, syn dictSyntax, elem elemFunc) (*Value, error) {
	v := &Value{Kind: VDict, Dict: map[string]*Value{}, Pos: pos(n)}
	for i := 0; i < int(n.NamedChildCount()); i++ {
		c := n.NamedChild(i)
		if c.Type() == "comment" {
			continue
		}
		if c.Type() != "pair" {
			return nil, x.errAt(pos(c), ENonLiteral, syn.allowed, "%s", syn.notPair)
		}
		kn := c.ChildByFieldName("key")
		k, err := syn.key(kn)
		if err != nil {
			return nil, err
		}
		if _, dup := v.Dict[k]; dup {
			return nil, x.errAt(pos(kn), EBadArgument, "", "key %q given twice", clip(k))
		}
		e, err := elem(c.ChildByFieldName("value"), depth+1)
		if err != nil {
			return nil, err
		}
		v.Keys = append(v.Keys, k)
		v.Dict[k] = e
	}
	return v, nil
}

// helperCall starts the Value of call n to helper h (named by fn), or
// refuses a call to anything outside the helper list.
func (x *extractor) helperCall(n, fn *sitter.Node, h string) (*Value, error) {
	if !helpers[h] {
		callee := n
		if fn != nil {
			callee = fn
		}
		return nil, x.errAt(pos(n), EUnknownHelper, HelperNames, "%s is not a declaration helper", clip(x.text(callee)))
	}
	return &Value{Kind: VCall, Helper: h, Kwargs: map[string]*Value{}, Pos: pos(n)}, nil
}

// notLiteral refuses a node that no literal form matched.
func (x *extractor) notLiteral(n *sitter.Node) error {
	what := typeName(n)
	if n.Type() == "identifier" {
		what = "the variable " + x.text(n)
	}
	return x.errAt(pos(n), ENonLiteral, literalHint, "%s is evaluated at run time; declarations are read without running the module", what)
}
