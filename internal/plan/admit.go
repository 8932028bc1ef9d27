package plan

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/mvm-sandbox/mvm/internal/evidence"
)

// Reason classifies an admission refusal.
type Reason string

// Admission refusal reasons.
const (
	ReasonMalformed Reason = "malformed"
	ReasonSchema    Reason = "schema"
	ReasonSignature Reason = "signature"
	ReasonWindow    Reason = "window"
	ReasonPolicy    Reason = "policy"
	ReasonReplay    Reason = "replay"
	ReasonLedger    Reason = "ledger"
	ReasonStore     Reason = "store"
	ReasonAudit     Reason = "audit"
	ReasonCanceled  Reason = "canceled"
)

// AdmissionError is returned by Admit. It wraps the cause, so errors.Is
// (ErrReplay, ErrOutsideWindow, ErrBadSignature, ...) and errors.As
// (*PolicyDenied) work on it.
type AdmissionError struct {
	Reason Reason
	PlanID string
	Err    error
}

func (e *AdmissionError) Error() string {
	return fmt.Sprintf("plan %s refused (%s): %v", e.PlanID, e.Reason, e.Err)
}

func (e *AdmissionError) Unwrap() error { return e.Err }

// AdmitOptions configures Admit.
type AdmitOptions struct {
	// TrustedKey is the host public key the plan must be signed by.
	TrustedKey ed25519.PublicKey
	// Ledger is the nonce ledger (required): OpenLedger(LedgerPath(dirs.Data)).
	Ledger *Ledger
	// StorePath is where the admitted plan is written (required), e.g.
	// <sandbox state dir>/plan.json.
	StorePath string
	// Chain, when set, receives plan.admitted or plan.refused.
	Chain *evidence.Chain
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// LookupEnv reads MVM_ACK_PERMISSIVE_RUN (os.LookupEnv when nil).
	LookupEnv func(string) (string, bool)
}

// Admission is an admitted plan.
type Admission struct {
	Signed *SignedPlan
	Plan   *Plan
	Hash   string           // plan hash for receipts
	Audit  *evidence.Record // the plan.admitted entry when a chain was given
}

// Admit runs the admission steps on a signed plan: well-formedness and
// schema, signature by the trusted key, validity window, profile policy,
// nonce replay (ledger), storing the plan, and the plan.admitted audit
// entry. Any failure returns an *AdmissionError and the sandbox must not
// boot; with a chain, a plan.refused entry records the reason.
func Admit(ctx context.Context, sp *SignedPlan, opts AdmitOptions) (*Admission, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	p := &sp.Payload
	refuse := func(reason Reason, err error) (*Admission, error) {
		aerr := &AdmissionError{Reason: reason, PlanID: p.PlanID, Err: err}
		if opts.Chain != nil && reason != ReasonAudit {
			fields := map[string]any{"plan_id": safeTag(p.PlanID), "reason": string(reason), "run_profile": safeTag(string(p.RunProfile))}
			var pd *PolicyDenied
			if errors.As(err, &pd) {
				fields["rule"] = pd.Rule
			}
			if _, aerr2 := opts.Chain.Append(evidence.KindPlanRefused, safeTag(p.Sandbox.ID), fields); aerr2 != nil {
				aerr.Err = fmt.Errorf("%w (and recording plan.refused failed: %v)", err, aerr2)
			}
		}
		return nil, aerr
	}
	if err := ctx.Err(); err != nil {
		return refuse(ReasonCanceled, err)
	}
	if opts.Ledger == nil || opts.StorePath == "" {
		return nil, &AdmissionError{Reason: ReasonLedger, PlanID: p.PlanID, Err: errors.New("admission needs a nonce ledger and a store path")}
	}
	if err := p.Check(); err != nil {
		if errors.Is(err, ErrUnsupportedSchema) {
			return refuse(ReasonSchema, err)
		}
		return refuse(ReasonMalformed, err)
	}
	if err := Verify(sp, opts.TrustedKey); err != nil {
		return refuse(ReasonSignature, err)
	}
	t := now()
	if err := CheckWindow(p, t); err != nil {
		return refuse(ReasonWindow, err)
	}
	if err := CheckPolicy(p, opts.LookupEnv); err != nil {
		return refuse(ReasonPolicy, err)
	}
	if err := ctx.Err(); err != nil {
		return refuse(ReasonCanceled, err)
	}
	_, until, _ := p.Window()
	if err := opts.Ledger.Consume(sp.PublicKeySHA256, p.Nonce, until, t); err != nil {
		if errors.Is(err, ErrReplay) {
			return refuse(ReasonReplay, err)
		}
		return refuse(ReasonLedger, err)
	}
	hash, err := sp.Hash()
	if err != nil {
		return refuse(ReasonStore, err)
	}
	if err := Store(sp, opts.StorePath); err != nil {
		return refuse(ReasonStore, err)
	}
	adm := &Admission{Signed: sp, Plan: p, Hash: hash}
	if opts.Chain != nil {
		fields := map[string]any{
			"plan_id":                p.PlanID,
			"plan_sha256":            hash,
			"run_profile":            string(p.RunProfile),
			"image_profile":          p.ImageProfile,
			"backend":                p.Backend,
			"image_digest":           p.ImageDigest,
			"kernel_digest":          p.KernelDigest,
			"network":                string(p.Network.Mode),
			"allow_count":            len(p.Network.Allow),
			"publish_count":          len(p.Network.Publish),
			"mount_count":            len(p.Mounts),
			"volume_count":           len(p.Volumes),
			"secret_count":           len(p.Secrets),
			"allow_rw_mount":         p.AllowRWMount,
			"allow_manifest_mounts":  p.AllowManifestMounts,
			"allow_manifest_secrets": p.AllowManifestSecrets,
			"env_key_count":          len(p.EnvKeys),
			"console":                p.Console,
			"signer_id":              sp.SignerID,
		}
		if p.WorkloadIRSHA256 != "" {
			fields["workload_ir_sha256"] = p.WorkloadIRSHA256
		}
		rec, err := opts.Chain.Append(evidence.KindPlanAdmitted, p.Sandbox.ID, fields)
		if err != nil {
			_ = os.Remove(opts.StorePath)
			return refuse(ReasonAudit, err)
		}
		adm.Audit = &rec
	}
	return adm, nil
}

// safeTag keeps only values that are valid audit tags (refused plans may
// carry arbitrary text).
func safeTag(s string) string {
	if len(s) > 128 {
		return "invalid"
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return "invalid"
		}
	}
	return s
}
