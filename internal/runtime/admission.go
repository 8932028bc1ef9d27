package runtime

import (
	"fmt"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// planFor is the one path from Up options to the plan input admission
// judges, for Up and WouldAdmit alike: defaults (from the image), option
// checks, then the plan input.
func planFor(o *UpOptions, img *bootImage, backend, id, name string) (plan.Input, error) {
	o.defaults(img)
	if err := o.Validate(); err != nil {
		return plan.Input{}, err
	}
	return planInput(id, name, img, backend, *o)
}

// unresolvedDigest stands for an image or kernel a dry run does not
// resolve (resolving may build, and a dry run writes nothing).
var unresolvedDigest = "sha256:" + strings.Repeat("0", 64)

// WouldAdmit answers "would Up admit these options?" without resolving
// the image, creating keys, booting or writing anything: it synthesizes
// the plan Up would sign and judges it with plan.CheckPolicy, the check
// admission itself runs. The image is taken to be a development image (the
// image profile only decides whether the plan's console flag is set,
// never whether the plan is admitted); digests are placeholders.
//
// It returns the synthesized (unsigned) plan and, when admission would
// refuse it, an error wrapping ErrPolicy (and the *plan.PolicyDenied) or
// the option error Up would return.
func (r *Runtime) WouldAdmit(o UpOptions) (*plan.Plan, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	backend, err := r.backend()
	if err != nil {
		return nil, err
	}
	label := o.Image
	if label == "" {
		label = "minimal"
	}
	img := &bootImage{
		ref:     sandbox.ImageRef{Name: label, Digest: unresolvedDigest, ImageProfile: plan.ImageDev},
		profile: plan.ImageDev,
	}
	id := sandbox.NewID()
	name := o.Name
	if name == "" {
		name = "dry-run-" + id
	}
	in, err := planFor(&o, img, backend, id, name)
	if err != nil {
		return nil, err
	}
	if err := r.manifestAttachments(&o); err != nil {
		return nil, err
	}
	att, err := r.ResolveAttachments(o)
	if err != nil {
		return nil, err
	}
	withAttachments(&in, att, o)
	in.KernelDigest = unresolvedDigest
	p, err := plan.Synthesize(in, nowUTC())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	if err := plan.CheckPolicy(p, nil); err != nil {
		return p, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	return p, nil
}
