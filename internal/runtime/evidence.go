package runtime

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// ErrPolicy reports a boot or request refused by admission or policy.
var ErrPolicy = errdefs.WithReason(errdefs.KindRefused, errdefs.ReasonPolicy, errors.New("refused by policy"))

// witness signs plans and receipts and appends to the audit chain.
type witness struct {
	signer *evidence.Signer
	chain  *evidence.Chain
}

var (
	witnessMu    sync.Mutex
	witnessCache = map[string]*witness{}
)

// witness loads (creating on first use) the host key and opens the chain.
func (r *Runtime) witness() (*witness, error) {
	witnessMu.Lock()
	defer witnessMu.Unlock()
	if w, ok := witnessCache[r.Dirs.Data]; ok {
		return w, nil
	}
	s, err := evidence.LoadOrCreateSigner(r.Dirs.Keys())
	if err != nil {
		return nil, fmt.Errorf("host signing key: %w", err)
	}
	w := &witness{signer: s, chain: evidence.OpenChain(r.Dirs.Audit(), s)}
	witnessCache[r.Dirs.Data] = w
	return w, nil
}

// Audit appends one lifecycle event to the chain. Fields must hold only
// ids, hashes, counts and policy tags.
func (r *Runtime) Audit(kind, subject string, fields map[string]any) (string, error) {
	w, err := r.witness()
	if err != nil {
		return "", err
	}
	if h := r.workloadHash(subject); h != "" && fields["workload_ir_sha256"] == nil {
		fields = withField(fields, "workload_ir_sha256", h)
	}
	rec, err := w.chain.Append(kind, subject, fields)
	if err != nil {
		return "", fmt.Errorf("audit %s: %w", kind, err)
	}
	return auditID(rec), nil
}

// withField returns a copy of fields with k set to v.
func withField(fields map[string]any, k string, v any) map[string]any {
	out := make(map[string]any, len(fields)+1)
	for key, val := range fields {
		out[key] = val
	}
	out[k] = v
	return out
}

// auditID names an audit entry the way `mvmctl audit show` accepts it.
func auditID(rec evidence.Record) string {
	return fmt.Sprintf("%d:%s", rec.Entry.Seq, rec.Hash[:16])
}

// planInput is what admission sees of an Up: the one translation of
// options into a plan, for real admission and dry runs alike.
func planInput(id, name string, img *bootImage, backend string, o UpOptions) (plan.Input, error) {
	prof, err := plan.ParseProfile(o.RunProfile)
	if err != nil {
		return plan.Input{}, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	keys := make([]string, 0, len(o.Env))
	for k := range o.Env {
		keys = append(keys, k)
	}
	irHash := ""
	if o.Workload != nil {
		irHash = o.Workload.IRSHA256
	}
	return plan.Input{
		WorkloadIRSHA256: irHash,
		SandboxID:        id, SandboxName: name,
		ImageDigest: img.ref.Digest, KernelDigest: img.kernelDigest(), OCIDigest: img.ref.OCIDigest,
		ImageProfile: img.profile, Backend: backend,
		Resources:  plan.Resources{CPUs: o.CPUs, MemoryMiB: o.MemoryMiB, DiskMiB: o.DiskMiB},
		RunProfile: prof,
		Network:    o.network(),
		EnvKeys:    keys,
		// A console may be opened later when both profiles allow it; the
		// plan records the answer and the agent learns it at boot.
		ConsoleIfAllowed: true,
	}, nil
}

// admit synthesizes, signs and admits the plan of a boot, storing it in
// the sandbox directory. A refusal is recorded and means no boot.
func (r *Runtime) admit(ctx context.Context, in plan.Input, dir string) (*plan.Admission, error) {
	w, err := r.witness()
	if err != nil {
		return nil, err
	}
	sp, err := plan.Prepare(in, w.signer, nowUTC())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	adm, err := plan.Admit(ctx, sp, plan.AdmitOptions{
		TrustedKey: w.signer.Public,
		Ledger:     plan.OpenLedger(plan.LedgerPath(r.Dirs.Data)),
		StorePath:  filepath.Join(dir, sandbox.PlanFile),
		Chain:      w.chain,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	return adm, nil
}

// admittedPlan is the plan a sandbox was admitted with.
func (r *Runtime) admittedPlan(nameOrID string) (*plan.Plan, error) {
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, err
	}
	sp, err := plan.Load(filepath.Join(dir, sandbox.PlanFile))
	if err != nil {
		return nil, fmt.Errorf("admitted plan of %s: %w", nameOrID, err)
	}
	return &sp.Payload, nil
}

// checkConsole refuses a terminal session the admitted plan does not
// allow.
func (r *Runtime) checkConsole(nameOrID string) error {
	p, err := r.admittedPlan(nameOrID)
	if err != nil {
		return err
	}
	if p.Console {
		return nil
	}
	if p.ImageProfile == plan.ImageSealed {
		return fmt.Errorf("%w: refused by the image profile \"sealed\": console is disabled", ErrPolicy)
	}
	return fmt.Errorf("%w: %s was admitted under run profile %q, which refuses console access (a terminal session); create it under the dev or permissive run profile", ErrPolicy, nameOrID, p.RunProfile)
}

// planHash returns the hash of the plan a sandbox was admitted with.
func planHash(dir string) string {
	sp, err := plan.Load(filepath.Join(dir, sandbox.PlanFile))
	if err != nil {
		return ""
	}
	h, _ := sp.Hash()
	return h
}
