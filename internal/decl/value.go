// Package decl extracts workload declarations statically into Workload
// IR: `@mvm.app(...)` in Python, `mvm.app({...})(fn)` in TypeScript or
// JavaScript, and the JSON recordings of the runtime SDKs' record mode.
// Source files are parsed with tree-sitter and never imported, evaluated
// or executed: the arguments of mvm.app must be literals or calls into a
// closed list of helpers. See docs/declarations.md.
package decl

import (
	"fmt"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
)

// Error codes of extraction (validation of the result adds the ir E_*
// codes).
const (
	ESyntax          = "E_SYNTAX"           // the file does not parse
	ENonLiteral      = "E_NON_LITERAL"      // a variable, expression, f-string, ... where a literal is needed
	EUnknownHelper   = "E_UNKNOWN_HELPER"   // a call to something that is not a declaration helper
	EUnknownArgument = "E_UNKNOWN_ARGUMENT" // a keyword a helper or mvm.app does not take
	EBadArgument     = "E_BAD_ARGUMENT"     // a literal of the wrong type or value
	EMissingArgument = "E_MISSING_ARGUMENT" // a required argument is absent
	EMultipleApps    = "E_MULTIPLE_APPS"    // more than one mvm.app in the file
	ENoApp           = "E_NO_APP"           // no mvm.app in the file
	EAppTarget       = "E_APP_TARGET"       // mvm.app on something other than a module-level function
	ETooLarge        = "E_TOO_LARGE"        // file or nesting beyond the caps
	ERecording       = "E_RECORDING"        // a record-mode recording that is malformed
	EInput           = "E_INPUT"            // the file or directory cannot be read / has no declaration
)

// Error is an extraction error at file:line:col (1-based) with a stable
// code and what is allowed instead.
type Error struct {
	File    string `json:"file"`
	Line    int    `json:"line"`
	Col     int    `json:"col"`
	Code    string `json:"code"`
	Msg     string `json:"message"`
	Allowed string `json:"allowed,omitempty"`
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d:%d", e.Line, e.Col)
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Code)
	b.WriteString(": ")
	b.WriteString(e.Msg)
	if e.Allowed != "" {
		b.WriteString(" (allowed: ")
		b.WriteString(e.Allowed)
		b.WriteString(")")
	}
	return b.String()
}

// Pos is a 1-based position in the source.
type Pos struct{ Line, Col int }

// Value kinds.
const (
	VStr   = "string"
	VInt   = "integer"
	VFloat = "number"
	VBool  = "boolean"
	VNone  = "None"
	VList  = "list"
	VDict  = "dict"
	VCall  = "helper call"
)

// Value is a literal or a helper call found in a declaration.
type Value struct {
	Kind  string
	Str   string
	Int   int64
	Float float64
	Bool  bool
	List  []*Value
	// Dict keeps key order.
	Keys []string
	Dict map[string]*Value
	// Helper calls: Helper is the helper's name without the module.
	Helper  string
	Args    []*Value
	KwOrder []string
	Kwargs  map[string]*Value
	Pos     Pos
}

// helpers is the closed list of declaration helpers.
var helpers = map[string]bool{
	"local_path": true, "nix_packages": true, "debian_packages": true, "python_image": true,
	"node_image": true, "template": true, "oci_image": true, "resources": true, "network": true, "secret": true,
	"entrypoint": true, "entrypoint_function": true, "hooks": true,
}

// HelperNames lists the helpers, for messages.
const HelperNames = "mvm.local_path, mvm.nix_packages, mvm.debian_packages, mvm.python_image, mvm.node_image, mvm.template, mvm.oci_image, mvm.resources, mvm.network, mvm.secret, mvm.entrypoint, mvm.entrypoint_function, mvm.hooks"

const literalHint = "string, number, True/False/None, list, dict of literals, or a call to " + HelperNames

// maxDepth bounds nesting of literal values.
const maxDepth = 32

// MaxSourceBytes caps a declaration file.
const MaxSourceBytes = 4 << 20

// ErrKind places extraction errors in the shared error model.
func (e *Error) ErrKind() (errdefs.Kind, string) { return errdefs.KindInvalidArgument, "" }
