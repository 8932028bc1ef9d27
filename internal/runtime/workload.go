package runtime

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/gofrs/flock"
	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/approval"
	"github.com/mvm-sandbox/mvm/internal/decl"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/ir"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/secret"
	"github.com/mvm-sandbox/mvm/internal/workload"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Workload is a compiled declaration ready to build or boot.
type Workload struct {
	IR *ir.Workload
	// Hash is the IR hash (sha256 of its RFC 8785 form).
	Hash string
	// BaseDir is the directory IR.Source.Path is relative to.
	BaseDir string
	// File is what it was loaded from.
	File string
}

// IsWorkloadFile reports whether path names a declaration, recording or
// IR document rather than a build directory or an image name.
func IsWorkloadFile(path string) bool {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".py", ".ts", ".mts", ".cts", ".js", ".mjs", ".cjs", ".json":
		st, err := os.Stat(path)
		return err == nil && st.Mode().IsRegular()
	}
	return false
}

// LoadWorkload reads FILE: an IR document (.json with schema_version and
// name), a record-mode recording (.json with workload_id) or a declaration
// (.py/.ts/...), which is compiled statically and never executed.
func LoadWorkload(ctx context.Context, path string) (*Workload, error) {
	var w *ir.Workload
	base := filepath.Dir(path)
	if strings.EqualFold(filepath.Ext(path), ".json") {
		data, err := readCapped(path, ir.MaxBytes)
		if err != nil {
			return nil, err
		}
		var probe map[string]json.RawMessage
		if json.Unmarshal(data, &probe) == nil && probe["workload_id"] != nil {
			res, err := decl.CompileSource(ctx, path, data)
			if err != nil {
				return nil, err
			}
			w = res.Workload
		} else if w, err = ir.Decode(data); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	} else {
		res, err := decl.Compile(ctx, path)
		if err != nil {
			return nil, err
		}
		w, base = res.Workload, res.BaseDir
	}
	h, err := w.Hash()
	if err != nil {
		return nil, err
	}
	return &Workload{IR: w, Hash: h, BaseDir: base, File: path}, nil
}

func readCapped(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}

// BuildWorkload realises the workload's image (template, packages, or an
// OCI image pulled with pull's options; the source with include/exclude,
// the function runner) through the image builder. An image no Debian
// release provides fails here with E_IMAGE_UNAVAILABLE. opts.Manifest is
// the workload's. An OCI reference is resolved once and pinned;
// opts.Pull.Refresh resolves it again (and moves the pin), opts.Refresh
// also rebuilds even if cached (mvmctl build FILE --refresh).
func (r *Runtime) BuildWorkload(ctx context.Context, wl *Workload, opts image.BuildOptions, progress func(image.Event)) (*image.Artifact, error) {
	store := r.Secrets()
	st, err := workload.Prepare(wl.IR, wl.BaseDir, filepath.Join(r.Dirs.Images(), "tmp"), func(n string) bool { return store.Check(n) == nil })
	if err != nil {
		return nil, err
	}
	defer st.Remove()
	opts.Manifest = st.Manifest
	return image.Build(ctx, r.Dirs, st.Dir, "", opts, progress)
}

// WorkloadFile is the sandbox-directory record of a declared workload.
const WorkloadFile = "workload.json"

// WorkloadInfo is what a sandbox keeps of its workload.
type WorkloadInfo struct {
	IRSHA256   string     `json:"ir_sha256"`
	Name       string     `json:"name"`
	Language   string     `json:"language"`
	Module     string     `json:"module,omitempty"`
	Function   string     `json:"function,omitempty"`
	Warm       bool       `json:"warm,omitempty"`
	WorkingDir string     `json:"working_dir"`
	BeforeStop [][]string `json:"before_stop,omitempty"`
}

// workloadOf reads a sandbox's workload record (nil when it has none).
func workloadOf(dir string) *WorkloadInfo {
	var wi WorkloadInfo
	if sandbox.ReadJSON(filepath.Join(dir, WorkloadFile), &wi) != nil || wi.IRSHA256 == "" {
		return nil
	}
	return &wi
}

// workloadHash is the IR hash of the sandbox with this id, or "".
func (r *Runtime) workloadHash(id string) string {
	if id == "" || strings.ContainsAny(id, "/.") {
		return ""
	}
	if wi := workloadOf(r.Layout.Dir(id)); wi != nil {
		return wi.IRSHA256
	}
	return ""
}

// ApprovalError refuses a workload that needs approval and has none.
type ApprovalError struct {
	Hash, Name, File, Profile string
	Err                       error
}

func (e *ApprovalError) Error() string {
	why := "MVM_REQUIRE_APPROVED=1"
	if e.Profile == "restrictive" {
		why = "the restrictive profile"
	}
	return fmt.Sprintf("workload %s (IR sha256 %s) is not approved, and %s admits only approved workloads; review it, then run `mvmctl approve %s`", e.Name, e.Hash, why, e.File)
}

// Unwrap makes it a policy refusal.
func (e *ApprovalError) Unwrap() error { return ErrPolicy }

// CheckApproved refuses (and audits the refusal of) a workload that the
// profile or MVM_REQUIRE_APPROVED requires to be approved and is not.
func (r *Runtime) CheckApproved(wl *Workload, profile string) error {
	if profile == "" {
		profile = "standard"
	}
	if !approval.Required(profile, nil) {
		return nil
	}
	w, err := r.witness()
	if err != nil {
		return err
	}
	if _, err := approval.Check(r.Dirs.Data, wl.Hash, w.signer.Public); err != nil {
		r.Audit("workload.refused", "workload:"+wl.IR.Name, map[string]any{
			"workload_ir_sha256": wl.Hash, "profile": profile, "reason": "not_approved"})
		return &ApprovalError{Hash: wl.Hash, Name: wl.IR.Name, File: wl.File, Profile: profile, Err: err}
	}
	return nil
}

// DeclaredNetworkError refuses a declaration's egress that neither an
// approval of its hash nor the operator's --allow-manifest-network grants.
type DeclaredNetworkError struct {
	Name, Hash, File string
	Allow            []string
}

func (e *DeclaredNetworkError) Error() string {
	return fmt.Sprintf("the declaration of %s asks for network egress to %s, which nobody has granted; "+
		"a declaration is a request: review and approve it (`mvmctl approve %s`), or grant it for this boot with --allow-manifest-network",
		e.Name, strings.Join(e.Allow, ", "), e.File)
}

// Unwrap makes it a policy refusal.
func (e *DeclaredNetworkError) Unwrap() error { return ErrPolicy }

// checkDeclaredNetwork treats a declaration's egress like a manifest's: it
// is shown before boot and applied only when its exact hash is approved or
// the operator consents (AllowManifestNetwork). The host's own loopback is
// refused by validation (and by the network policy for non-CLI origins).
func (r *Runtime) checkDeclaredNetwork(wl *Workload, o *UpOptions) error {
	n := wl.IR.Network
	if n.Mode != ir.NetAllow || len(n.Allow) == 0 {
		return nil
	}
	if o.Notice != nil {
		o.Notice(fmt.Sprintf("the declaration of %s asks for network egress to %s", wl.IR.Name, strings.Join(n.Allow, ", ")))
	}
	if o.AllowManifestNetwork {
		return nil
	}
	w, err := r.witness()
	if err != nil {
		return err
	}
	if _, err := approval.Check(r.Dirs.Data, wl.Hash, w.signer.Public); err == nil {
		return nil
	}
	r.Audit("workload.refused", "workload:"+wl.IR.Name, map[string]any{
		"workload_ir_sha256": wl.Hash, "reason": "network_not_granted", "allow_count": len(n.Allow)})
	return &DeclaredNetworkError{Name: wl.IR.Name, Hash: wl.Hash, File: wl.File, Allow: n.Allow}
}

// DeclaredSecretsError refuses a declaration's secrets that neither an
// approval of its hash nor the operator's --allow-manifest-secrets grants.
type DeclaredSecretsError struct {
	Name, Hash, File string
	Secrets          []string // NAME:ENV_VAR
}

func (e *DeclaredSecretsError) Error() string {
	return fmt.Sprintf("the declaration of %s asks for the secret(s) %s, which nobody has granted; "+
		"a declaration is a request: review and approve it (`mvmctl approve %s`), or grant them for this boot with --allow-manifest-secrets",
		e.Name, strings.Join(e.Secrets, ", "), e.File)
}

// Unwrap makes it a policy refusal.
func (e *DeclaredSecretsError) Unwrap() error { return ErrPolicy }

// OriginDeclaration marks a secret a workload declaration asked for
// (mvm.secret in its env).
const OriginDeclaration = "declaration"

// declaredSecrets treats a declaration's mvm.secret(...) like a manifest's
// [secrets]: shown before boot (name and variable) and handed over only when
// the exact IR hash is approved or the operator consents
// (AllowManifestSecrets). It returns the references, marked with their
// origin.
func (r *Runtime) declaredSecrets(wl *Workload, o *UpOptions) ([]secret.Ref, error) {
	w := wl.IR
	var refs []secret.Ref
	var names []string
	keys := make([]string, 0, len(w.Env))
	for k := range w.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if v := w.Env[k]; v.Kind == "secret" {
			ref := secret.Ref{Name: v.Name, Env: k, Origin: OriginDeclaration}
			refs = append(refs, ref)
			names = append(names, ref.String())
		}
	}
	if len(refs) == 0 {
		return nil, nil
	}
	if o.Notice != nil {
		o.Notice(fmt.Sprintf("the declaration of %s asks for the secret(s) %s (name:variable)", w.Name, strings.Join(names, ", ")))
	}
	if o.AllowManifestSecrets {
		return refs, nil
	}
	wit, err := r.witness()
	if err != nil {
		return nil, err
	}
	if _, err := approval.Check(r.Dirs.Data, wl.Hash, wit.signer.Public); err == nil {
		return refs, nil
	}
	r.Audit("workload.refused", "workload:"+w.Name, map[string]any{
		"workload_ir_sha256": wl.Hash, "reason": "secrets_not_granted", "secret_count": len(refs)})
	return nil, &DeclaredSecretsError{Name: w.Name, Hash: wl.Hash, File: wl.File, Secrets: names}
}

// Approve records the workload's hash as approved with the host key.
func (r *Runtime) Approve(wl *Workload) (*approval.Approval, error) {
	w, err := r.witness()
	if err != nil {
		return nil, err
	}
	a, err := approval.Approve(r.Dirs.Data, wl.Hash, wl.IR.Name, w.signer, time.Now())
	if err != nil {
		return nil, err
	}
	_, err = r.Audit("workload.approved", "workload:"+wl.IR.Name, map[string]any{"workload_ir_sha256": wl.Hash, "signer_id": w.signer.ID})
	return a, err
}

// Approvals lists stored approvals, each verified against the host key.
func (r *Runtime) Approvals() ([]approval.Entry, error) {
	w, err := r.witness()
	if err != nil {
		return nil, err
	}
	return approval.List(r.Dirs.Data, w.signer.Public)
}

// UpWorkload builds and boots a declared workload: approval (when the
// profile or MVM_REQUIRE_APPROVED asks for it), build, boot with the IR's
// resources and network (deny = no NIC, allow = the host-enforced
// allowlist), then before_start hooks, the command entrypoint, the warm
// worker and after_start hooks. On failure nothing is left running.
func (r *Runtime) UpWorkload(ctx context.Context, wl *Workload, o UpOptions) (*Sandbox, error) {
	if err := r.CheckApproved(wl, o.RunProfile); err != nil {
		return nil, err
	}
	if err := r.checkDeclaredNetwork(wl, &o); err != nil {
		return nil, err
	}
	declared, err := r.declaredSecrets(wl, &o)
	if err != nil {
		return nil, err
	}
	// a refresh re-resolves the OCI base (and moves its pin); it does not
	// rebuild what is cached
	art, err := r.BuildWorkload(ctx, wl, image.BuildOptions{Pull: o.pullOptions()}, o.BuildProgress)
	if err != nil {
		return nil, err
	}
	w := wl.IR
	o.Image, o.Refresh = art.Digest, false
	o.CPUs, o.MemoryMiB, o.DiskMiB = w.Resources.CPUCores, w.Resources.MemoryMB, w.Resources.DiskMB
	o.Network = netpolicy.Config{}
	if w.Network.Mode == ir.NetAllow {
		noAck := func(string) (string, bool) { return "", false }
		req := netpolicy.Request{Network: "none", Origin: netpolicy.OriginManifest}
		if len(w.Network.Allow) > 0 {
			req = netpolicy.Request{Network: "allowlist", Allow: w.Network.Allow, Origin: netpolicy.OriginManifest}
		}
		for _, p := range w.Network.Ports {
			host := p.Host
			if host == 0 {
				host = p.Guest
			}
			req.Publish = append(req.Publish, fmt.Sprintf("%d:%d", host, p.Guest))
		}
		cfg, _, err := netpolicy.Build(req, noAck)
		if err != nil {
			return nil, fmt.Errorf("%w: the workload's network: %v", ErrPolicy, err)
		}
		o.Network = cfg
	}
	wi := &WorkloadInfo{IRSHA256: wl.Hash, Name: w.Name, Language: w.Language, WorkingDir: workload.WorkingDir(w), BeforeStop: w.Hooks.BeforeStop}
	if ep, ok := w.FunctionEntrypoint(); ok {
		wi.Module, wi.Function, wi.Warm, wi.WorkingDir = ep.Module, ep.Function, ep.Warm, ep.WorkingDir
	}
	// mvm.secret(NAME) env values: handed over by name, like --secret.
	o.Secrets = append(o.Secrets, declared...)
	o.Workload = wi
	if o.Name == "" {
		o.Name = w.Name
	}
	sb, err := r.Up(ctx, o)
	if err != nil {
		return nil, err
	}
	sb.Repinned = art.Repinned
	fail := func(err error) (*Sandbox, error) {
		r.Down(context.Background(), sb.ID)
		return nil, err
	}
	runHooks := func(phase string, hooks [][]string) error {
		for i, h := range hooks {
			var out bytes.Buffer
			res, err := r.Exec(ctx, sb.ID, ExecOptions{Argv: h, Cwd: wi.WorkingDir, Stdout: &out, Stderr: &out, Timeout: 5 * time.Minute})
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("exit code %d: %s", res.ExitCode, tail(out.String(), 2000))
			}
			if err != nil {
				return fmt.Errorf("%s hook %d (%s): %w", phase, i, strings.Join(h, " "), err)
			}
		}
		return nil
	}
	if err := runHooks("before_start", w.Hooks.BeforeStart); err != nil {
		return fail(err)
	}
	if _, ok := w.CommandEntrypoint(); ok {
		if _, _, err := r.ProcStart(ctx, sb.ID, ProcStartOptions{Entrypoint: true, Cwd: wi.WorkingDir}); err != nil {
			return fail(fmt.Errorf("start the entrypoint: %w", err))
		}
	}
	if wi.Warm {
		if err := r.withAgent(ctx, sb.ID, func(c *agentapi.Client) error {
			_, err := r.startWorker(ctx, c, sb.ID, wi)
			return err
		}); err != nil {
			return fail(fmt.Errorf("start the warm worker: %w", err))
		}
	}
	if err := runHooks("after_start", w.Hooks.AfterStart); err != nil {
		return fail(err)
	}
	return sb, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// runBeforeStop runs a workload's before_stop hooks (best effort, bounded).
func (r *Runtime) runBeforeStop(ctx context.Context, id string, wi *WorkloadInfo) {
	for _, h := range wi.BeforeStop {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		r.Exec(cctx, id, ExecOptions{Argv: h, Cwd: wi.WorkingDir, Stdout: io.Discard, Stderr: io.Discard})
		cancel()
	}
}

// MaxInvokeBytes caps the input and the output of an invoke.
const MaxInvokeBytes = 16 << 20

// ErrInvokeTooLarge reports an input or output beyond MaxInvokeBytes.
var ErrInvokeTooLarge = errdefs.LimitExceeded(errors.New("invoke payload too large"))

// InvokeOptions describe a call.
type InvokeOptions struct {
	// Input is one JSON value: an array is the positional arguments, an
	// object the keyword arguments, anything else the single argument;
	// nil means no arguments.
	Input   []byte
	Timeout time.Duration
}

// InvokeError is an exception raised by the function in the guest.
type InvokeError struct {
	Type      string `json:"type"`
	Message   string `json:"message"`
	Traceback string `json:"traceback"`
}

func (e *InvokeError) Error() string { return e.Type + ": " + e.Message }

// InvokeResult is the reply of a call.
type InvokeResult struct {
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *InvokeError    `json:"error,omitempty"`
	Warm   bool            `json:"warm"`
	// AuditID and Receipt are set for cold calls (an exec with a receipt).
	AuditID string `json:"audit_id,omitempty"`
	Receipt []byte `json:"-"`
	IRHash  string `json:"workload_ir_sha256"`
}

func request(input []byte) ([]byte, error) {
	if len(input) > MaxInvokeBytes {
		return nil, fmt.Errorf("%w: input is %d bytes, more than %d", ErrInvokeTooLarge, len(input), MaxInvokeBytes)
	}
	req := map[string]any{"args": []any{}, "kwargs": map[string]any{}}
	if len(bytes.TrimSpace(input)) > 0 {
		var v any
		dec := json.NewDecoder(bytes.NewReader(input))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("--input is not JSON: %w", err)
		}
		if _, err := dec.Token(); err != io.EOF {
			return nil, errors.New("--input holds more than one JSON value")
		}
		switch x := v.(type) {
		case []any:
			req["args"] = x
		case map[string]any:
			req["kwargs"] = x
		default:
			req["args"] = []any{x}
		}
	}
	return json.Marshal(req)
}

type reply struct {
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result"`
	Error  *InvokeError    `json:"error"`
}

func parseReply(b []byte) (*InvokeResult, error) {
	var rp reply
	dec := json.NewDecoder(bytes.NewReader(bytes.TrimSpace(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rp); err != nil {
		return nil, fmt.Errorf("the guest runner sent no valid reply: %v (output %q)", err, tail(string(b), 200))
	}
	if !rp.OK && rp.Error == nil {
		return nil, errors.New("the guest runner sent a failure without an error")
	}
	if rp.OK && rp.Result == nil {
		rp.Result = json.RawMessage("null")
	}
	return &InvokeResult{OK: rp.OK, Result: rp.Result, Error: rp.Error}, nil
}

// capWriter keeps at most max bytes and fails past them.
type capWriter struct {
	buf bytes.Buffer
	max int
}

func (c *capWriter) Write(p []byte) (int, error) {
	if c.buf.Len()+len(p) > c.max {
		return 0, ErrInvokeTooLarge
	}
	return c.buf.Write(p)
}

// Invoke calls the workload's function in a running sandbox with JSON
// arguments. An exception in the function is a result with OK false (not
// an error); errors are transport, timeout and size failures. A warm
// workload is served by its worker (restarted when it has died).
func (r *Runtime) Invoke(ctx context.Context, name string, o InvokeOptions) (*InvokeResult, error) {
	_, dir, err := r.dir(name)
	if err != nil {
		return nil, err
	}
	wi := workloadOf(dir)
	if wi == nil || wi.Function == "" {
		return nil, fmt.Errorf("%s was not booted from a declaration with a function entrypoint (use `mvmctl up FILE` with an @mvm.app declaration)", name)
	}
	req, err := request(o.Input)
	if err != nil {
		return nil, err
	}
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	var res *InvokeResult
	if wi.Warm {
		res, err = r.invokeWarm(ctx, name, dir, wi, req)
	} else {
		res, err = r.invokeCold(ctx, name, wi, req, o.Timeout)
	}
	if err != nil && ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("%w after %s", ErrTimeout, o.Timeout)
	}
	red := r.Redactor(name)
	if res != nil {
		res.IRHash = wi.IRSHA256
		res.redact(red)
	}
	return res, redactErr(err, red)
}

// redactErr is err with the sandbox's secret values replaced in its
// message (a reply the runner garbled is quoted in the error), keeping
// its kind and reason; err itself when there is nothing to replace.
func redactErr(err error, red *secret.Redactor) error {
	if err == nil || red.Empty() {
		return err
	}
	msg := err.Error()
	if r := red.String(msg); r != msg {
		return errdefs.WithReason(errdefs.KindOf(err), errdefs.ReasonOf(err), errors.New(r))
	}
	return err
}

// redact replaces the sandbox's secret values in a reply (the result and
// the exception) with [secret:NAME], like every captured output. A value
// that is not inside a JSON string (a numeric secret returned as a
// number) leaves invalid JSON behind; the result is then the redacted text
// as a JSON string.
func (res *InvokeResult) redact(red *secret.Redactor) {
	if red.Empty() {
		return
	}
	if len(res.Result) > 0 {
		b := red.Bytes(res.Result)
		if !json.Valid(b) {
			b, _ = json.Marshal(string(b))
		}
		res.Result = b
	}
	if e := res.Error; e != nil {
		e.Type, e.Message, e.Traceback = red.String(e.Type), red.String(e.Message), red.String(e.Traceback)
	}
}

func runnerArgv(wi *WorkloadInfo, mode string) []string {
	if wi.Language == ir.LangNode {
		return []string{"node", workload.NodeRunner, mode, wi.Module, wi.Function}
	}
	return []string{"python3", workload.PythonRunner, mode, wi.Module, wi.Function}
}

func (r *Runtime) invokeCold(ctx context.Context, name string, wi *WorkloadInfo, req []byte, timeout time.Duration) (*InvokeResult, error) {
	out := &capWriter{max: MaxInvokeBytes + 1<<20}
	var stderr capWriter
	stderr.max = 1 << 20
	res, err := r.Exec(ctx, name, ExecOptions{Argv: runnerArgv(wi, "call"), Cwd: wi.WorkingDir,
		Stdin: bytes.NewReader(req), Stdout: out, Stderr: io.Discard, Timeout: timeout})
	if err != nil {
		if errors.Is(err, ErrInvokeTooLarge) {
			return nil, fmt.Errorf("%w: the result is larger than %d bytes", ErrInvokeTooLarge, MaxInvokeBytes)
		}
		return nil, err
	}
	if res.ExitCode != 0 && out.buf.Len() == 0 {
		return nil, fmt.Errorf("the guest runner exited with code %d without a reply", res.ExitCode)
	}
	ir, err := parseReply(out.buf.Bytes())
	if err != nil {
		return nil, err
	}
	ir.AuditID, ir.Receipt = res.AuditID, res.Receipt
	return ir, nil
}

// workerFile records the warm worker of a sandbox.
const workerFile = "worker.json"

type workerState struct {
	Handle       string `json:"handle"`
	StdoutOffset int64  `json:"stdout_offset"`
	StderrOffset int64  `json:"stderr_offset"`
}

// errLine stops ProcWait once the awaited line arrived.
var errLine = errors.New("line seen")

// lineWatcher scans stdout for one line and counts what it consumed.
type lineWatcher struct {
	want     string
	buf      []byte
	consumed int64
	seen     bool
}

func (l *lineWatcher) Write(p []byte) (int, error) {
	for i, c := range p {
		l.consumed++
		if c != '\n' {
			if len(l.buf) < 4096 {
				l.buf = append(l.buf, c)
			}
			continue
		}
		line := string(l.buf)
		l.buf = l.buf[:0]
		if line == l.want {
			l.seen = true
			return i + 1, errLine
		}
	}
	return len(p), nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// startWorker starts the warm worker and waits for its "ready" line.
func (r *Runtime) startWorker(ctx context.Context, c *agentapi.Client, id string, wi *WorkloadInfo) (*workerState, error) {
	_, dir, err := r.dir(id)
	if err != nil {
		return nil, err
	}
	argv := append(runnerArgv(wi, "serve"), workload.WorkerDir)
	env, _ := r.sandboxEnv(id, nil)
	if _, err := c.Agent.MakeDir(ctx, &pb.MakeDirRequest{Path: workload.WorkerDir, Mode: 0o700, Parents: true}); err != nil && status.Code(err) != codes.AlreadyExists {
		return nil, fmt.Errorf("worker directory: %w", err)
	}
	info, err := c.Agent.ProcStart(ctx, &pb.ProcStartRequest{Start: &pb.ExecStart{Argv: argv, Env: env, Cwd: wi.WorkingDir, Stdin: true}})
	if err != nil {
		return nil, err
	}
	r.auditOp(id, "worker.started", map[string]any{"handle": info.Handle, "workload_ir_sha256": wi.IRSHA256})
	ws := &workerState{Handle: info.Handle}
	lw := &lineWatcher{want: "ready"}
	var se countWriter
	last, err := c.ProcWait(ctx, &pb.ProcWaitRequest{Handle: ws.Handle}, lw, &se, nil)
	if !lw.seen {
		if err == nil && last != nil && last.GetExit() != nil {
			err = fmt.Errorf("the worker exited with code %d before it was ready (see `mvmctl proc logs`)", last.GetExit().Code)
		}
		return nil, fmt.Errorf("warm worker did not start: %v", err)
	}
	ws.StdoutOffset = lw.consumed
	if err := sandbox.WriteJSON(filepath.Join(dir, workerFile), ws); err != nil {
		return nil, err
	}
	return ws, nil
}

func (r *Runtime) invokeWarm(ctx context.Context, name, dir string, wi *WorkloadInfo, req []byte) (res *InvokeResult, err error) {
	lk := flock.New(filepath.Join(dir, "invoke.lock"))
	if ok, err := lk.TryLockContext(ctx, 5*time.Millisecond); err != nil || !ok {
		return nil, fmt.Errorf("wait for the worker: %w", err)
	}
	defer lk.Unlock()
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		var ws workerState
		if sandbox.ReadJSON(filepath.Join(dir, workerFile), &ws) != nil || ws.Handle == "" {
			w, err := r.startWorker(ctx, c, name, wi)
			if err != nil {
				return err
			}
			ws = *w
		}
		var rid [12]byte
		rand.Read(rid[:])
		id := hex.EncodeToString(rid[:])
		in, out := workload.WorkerDir+"/"+id+".in", workload.WorkerDir+"/"+id+".out"
		defer func() {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c.Agent.Remove(cctx, &pb.RemoveRequest{Path: in})
			c.Agent.Remove(cctx, &pb.RemoveRequest{Path: out})
		}()
		if _, err := c.WriteFile(ctx, &pb.WriteFileHeader{Path: in, Mode: 0o600, HasMode: true}, bytes.NewReader(req)); err != nil {
			return fmt.Errorf("send the request: %w", err)
		}
		if _, err := c.ProcStdin(ctx, ws.Handle, strings.NewReader(id+"\n"), false); err != nil {
			// the worker is gone: start a new one and retry once
			if w, err2 := r.startWorker(ctx, c, name, wi); err2 == nil {
				ws = *w
				_, err = c.ProcStdin(ctx, ws.Handle, strings.NewReader(id+"\n"), false)
			}
			if err != nil {
				return fmt.Errorf("send the request to the worker: %w", err)
			}
		}
		lw := &lineWatcher{want: "done " + id}
		se := &countWriter{}
		last, err := c.ProcWait(ctx, &pb.ProcWaitRequest{Handle: ws.Handle, StdoutOffset: ws.StdoutOffset, StderrOffset: ws.StderrOffset}, lw, se, nil)
		ws.StdoutOffset += lw.consumed
		ws.StderrOffset += se.n
		if !lw.seen {
			if err == nil && last != nil && last.GetExit() != nil {
				code := last.GetExit().Code
				os.Remove(filepath.Join(dir, workerFile))
				r.auditOp(name, "worker.crashed", map[string]any{"exit_code": int(code), "workload_ir_sha256": wi.IRSHA256})
				// restart it for the next call
				if _, err := r.startWorker(ctx, c, name, wi); err != nil {
					return fmt.Errorf("the worker crashed (exit code %d) during this call, and restarting it failed: %v", code, err)
				}
				return &WorkerCrashError{ExitCode: int(code)}
			}
			return fmt.Errorf("wait for the worker: %w", err)
		}
		sandbox.WriteJSON(filepath.Join(dir, workerFile), ws)
		var buf capWriter
		buf.max = MaxInvokeBytes + 1<<20
		if _, _, err := c.ReadFile(ctx, out, &buf); err != nil {
			if errors.Is(err, ErrInvokeTooLarge) {
				return fmt.Errorf("%w: the result is larger than %d bytes", ErrInvokeTooLarge, MaxInvokeBytes)
			}
			return fmt.Errorf("read the reply: %w", err)
		}
		res, err = parseReply(buf.buf.Bytes())
		if err != nil {
			return err
		}
		res.Warm = true
		r.auditOp(name, "workload.invoked", map[string]any{"warm": true, "ok": res.OK, "workload_ir_sha256": wi.IRSHA256,
			"stdin_bytes": len(req), "stdout_bytes": buf.buf.Len()})
		return nil
	})
	return res, err
}

// WorkerCrashError is the error of a call during which the warm worker
// died; the worker has been restarted for the next call.
type WorkerCrashError struct{ ExitCode int }

// ErrKind: the guest failed.
func (e *WorkerCrashError) ErrKind() (errdefs.Kind, string) { return errdefs.KindGuest, "" }

func (e *WorkerCrashError) Error() string {
	return fmt.Sprintf("the warm worker crashed during this call (exit code %d); it has been restarted for the next call", e.ExitCode)
}
