package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/approval"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/secret"
)

func writeDecl(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "app.py")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const egressDecl = `import mvm
@mvm.app(name="fetcher", image=mvm.python_image("3.13"),
         network=mvm.network(mode="allow", allow=["api.example.com:443"]))
def run() -> str:
    return "ok"
`

// A declaration's egress is a request, like a manifest's: printed before
// boot, refused (before anything is built or created) unless its hash is
// approved or the operator consents, and the refusal is audited.
func TestDeclaredEgressNeedsApprovalOrConsent(t *testing.T) {
	r := testRuntime(t)
	wl, err := LoadWorkload(context.Background(), writeDecl(t, egressDecl))
	if err != nil {
		t.Fatal(err)
	}
	var notices []string
	o := UpOptions{Notice: func(s string) { notices = append(notices, s) }}
	_, err = r.UpWorkload(context.Background(), wl, o)
	var de *DeclaredNetworkError
	if !errors.As(err, &de) || !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "mvmctl approve") {
		t.Fatalf("unapproved egress: %v", err)
	}
	if len(notices) != 1 || !strings.Contains(notices[0], "api.example.com:443") {
		t.Errorf("egress not shown before boot: %v", notices)
	}
	if ents, _ := os.ReadDir(filepath.Join(r.Dirs.State, "sb")); len(ents) != 0 {
		t.Errorf("a refused up left state: %v", ents)
	}
	chain, _ := os.ReadFile(filepath.Join(r.Dirs.Audit(), "chain.jsonl"))
	if !strings.Contains(string(chain), "network_not_granted") || !strings.Contains(string(chain), wl.Hash) {
		t.Errorf("refusal not audited")
	}
	// approved: the network check passes (the build is what fails here,
	// with no template cache in this test)
	if _, err := r.Approve(wl); err != nil {
		t.Fatal(err)
	}
	if err := r.checkDeclaredNetwork(wl, &o); err != nil {
		t.Errorf("approved egress refused: %v", err)
	}
	if _, err := approval.Check(r.Dirs.Data, wl.Hash, nil); err == nil {
		t.Error("approval verified with no key")
	}
	// consent instead of approval
	r2 := testRuntime(t)
	o2 := UpOptions{AllowManifestNetwork: true}
	if err := r2.checkDeclaredNetwork(wl, &o2); err != nil {
		t.Errorf("consented egress refused: %v", err)
	}
	// a deny declaration needs neither
	deny, err := LoadWorkload(context.Background(), writeDecl(t, strings.Replace(egressDecl, `mode="allow", allow=["api.example.com:443"]`, `mode="deny"`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.checkDeclaredNetwork(deny, &UpOptions{}); err != nil {
		t.Errorf("deny: %v", err)
	}
}

// The host's own loopback can never be declared.
func TestDeclarationNeverAllowsHostInternal(t *testing.T) {
	_, err := LoadWorkload(context.Background(), writeDecl(t, strings.Replace(egressDecl, "api.example.com:443", "host.mvm.internal:22", 1)))
	if err == nil || !strings.Contains(err.Error(), "E_NETWORK") || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("host.mvm.internal declared: %v", err)
	}
}

// An invoke reply is captured output: the sandbox's secret values are
// replaced in the result and in the exception, and the result stays JSON.
func TestInvokeResultRedacted(t *testing.T) {
	red := secret.NewRedactor(map[string][]byte{"openai": []byte("sk-123"), "pin": []byte("4711")})
	res := &InvokeResult{Result: json.RawMessage(`{"key":"sk-123","n":1}`),
		Error: &InvokeError{Type: "ValueError", Message: "bad key sk-123", Traceback: "line 3: sk-123"}}
	res.redact(red)
	if string(res.Result) != `{"key":"[secret:openai]","n":1}` || strings.Contains(res.Error.Message+res.Error.Traceback, "sk-123") {
		t.Fatalf("%s %+v", res.Result, res.Error)
	}
	num := &InvokeResult{Result: json.RawMessage(`4711`)}
	num.redact(red)
	if string(num.Result) != `"[secret:pin]"` {
		t.Fatalf("numeric value: %s", num.Result)
	}
	plain := &InvokeResult{Result: json.RawMessage(`"x"`)}
	plain.redact(nil)
	if string(plain.Result) != `"x"` {
		t.Fatal(plain.Result)
	}
}

// An error that quotes the guest's reply (a garbled one) is redacted too,
// and keeps its kind.
func TestInvokeErrorRedacted(t *testing.T) {
	red := secret.NewRedactor(map[string][]byte{"openai": []byte("sk-123")})
	_, perr := parseReply([]byte("not json sk-123"))
	err := redactErr(errdefs.New(errdefs.KindGuest, perr), red)
	if err == nil || strings.Contains(err.Error(), "sk-123") || !strings.Contains(err.Error(), "[secret:openai]") || errdefs.KindOf(err) != errdefs.KindGuest {
		t.Fatalf("%v (kind %v)", err, errdefs.KindOf(err))
	}
	plain := errors.New("no secret here")
	if redactErr(plain, red) != plain || redactErr(nil, red) != nil {
		t.Fatal("an error without a value was rewritten")
	}
}

// A declaration's mvm.secret(...) is a request like a manifest's [secrets]:
// printed before boot (names and variables, never a value), refused before
// anything is built or created unless its hash is approved or the operator
// consents, and the refusal is audited.
func TestDeclaredSecretsNeedApprovalOrConsent(t *testing.T) {
	r := testRuntime(t)
	wl, err := LoadWorkload(context.Background(), writeDecl(t, `import mvm
@mvm.app(name="keyed", image=mvm.python_image("3.13"), env={"API_KEY": mvm.secret("openai"), "MODE": "x"})
def run() -> str:
    return "ok"
`))
	if err != nil {
		t.Fatal(err)
	}
	var notices []string
	o := UpOptions{Notice: func(s string) { notices = append(notices, s) }}
	_, err = r.UpWorkload(context.Background(), wl, o)
	var de *DeclaredSecretsError
	if !errors.As(err, &de) || !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "mvmctl approve") || !strings.Contains(err.Error(), "openai:API_KEY") {
		t.Fatalf("ungranted secrets: %v", err)
	}
	if len(notices) != 1 || !strings.Contains(notices[0], "openai:API_KEY") {
		t.Errorf("secrets not shown before boot: %v", notices)
	}
	if ents, _ := os.ReadDir(filepath.Join(r.Dirs.State, "sb")); len(ents) != 0 {
		t.Errorf("a refused up left state: %v", ents)
	}
	if chain, _ := os.ReadFile(filepath.Join(r.Dirs.Audit(), "chain.jsonl")); !strings.Contains(string(chain), "secrets_not_granted") {
		t.Error("refusal not audited")
	}
	// Consent, then approval, grant them, marked as the declaration's.
	refs, err := r.declaredSecrets(wl, &UpOptions{AllowManifestSecrets: true})
	if err != nil || len(refs) != 1 || refs[0] != (secret.Ref{Name: "openai", Env: "API_KEY", Origin: OriginDeclaration}) {
		t.Fatalf("consent: %v %+v", err, refs)
	}
	if _, err := r.Approve(wl); err != nil {
		t.Fatal(err)
	}
	if refs, err := r.declaredSecrets(wl, &UpOptions{}); err != nil || len(refs) != 1 {
		t.Fatalf("approved: %v %+v", err, refs)
	}
}

// TestRefreshOnlyOnImagesBuiltOnTheFly: Refresh is accepted for a build
// directory and a declaration, and refused (an invalid argument naming
// image pull) for anything else, before anything is created.
func TestRefreshOnlyOnImagesBuiltOnTheFly(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("template = \"minimal\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	decl := filepath.Join(t.TempDir(), "app.py")
	if err := os.WriteFile(decl, []byte("import mvm\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, o := range []UpOptions{{Image: dir, Refresh: true}, {Image: decl, Refresh: true}, {Image: "minimal"}} {
		if err := o.Validate(); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
	for _, o := range []UpOptions{
		{Refresh: true}, {Image: "minimal", Refresh: true}, {Image: "python:3.12-slim", Refresh: true},
		{Image: dir, Refresh: true, NoBuildDir: true}, {Image: t.TempDir(), Refresh: true},
	} {
		err := o.Validate()
		if errdefs.KindOf(err) != errdefs.KindInvalidArgument || !strings.Contains(err.Error(), "image pull") {
			t.Errorf("%+v: want an invalid argument naming image pull, got %v", o, err)
		}
	}
}
