package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// network is the network policy an Up asks for; with no allowlist there
// is no network device at all.
func (o UpOptions) network() plan.Network { return o.PlanNetwork() }

// PlanNetwork is the network policy as a plan records it (for dry runs).
func (o UpOptions) PlanNetwork() plan.Network { return o.Network.PlanNetwork() }

// ManifestNetworkError refuses a boot whose image manifest asks for
// egress the operator has not granted.
type ManifestNetworkError struct {
	// Missing are the HOST:PORT entries asked for and not granted.
	Missing []string
}

func (e *ManifestNetworkError) Error() string {
	return fmt.Sprintf("the image's manifest (mvm.toml) asks for network egress to %s, which the operator has not granted; "+
		"a manifest is a request: grant its network explicitly, or allow the same destinations yourself",
		strings.Join(e.Missing, ", "))
}

// Unwrap makes it a policy refusal.
func (e *ManifestNetworkError) Unwrap() error { return ErrPolicy }

// manifestNetwork applies the network an image's manifest asks for
// (network = PRESET, allow = [...]). A manifest is untrusted: what it asks
// for is shown (Notice) before boot and applied only with the operator's
// consent (AllowManifestNetwork), unless the operator's own network
// already allows every entry. HostAlias is never accepted from it.
func (o *UpOptions) manifestNetwork(preset string, allow []string) error {
	if (preset == "" || preset == string(netpolicy.None)) && len(allow) == 0 {
		return nil
	}
	noAck := func(string) (string, bool) { return "", false }
	asked, _, err := netpolicy.Build(netpolicy.Request{Network: preset, Allow: allow, Origin: netpolicy.OriginManifest}, noAck)
	if err != nil {
		return fmt.Errorf("%w: the image manifest's network: %v", ErrPolicy, err)
	}
	if asked.Mode != netpolicy.Allowlist {
		return nil
	}
	for _, r := range asked.Allow {
		if r.Host == netpolicy.HostAlias {
			return fmt.Errorf("%w: the image's manifest (mvm.toml) asks for %s, the host's own loopback; a manifest can never allow it", ErrPolicy, r)
		}
	}
	if o.Network.Mode == netpolicy.Unrestricted {
		return nil // the operator already allows everything
	}
	granted := map[string]bool{}
	if o.Network.Mode == netpolicy.Allowlist {
		for _, s := range o.Network.Strings() {
			granted[s] = true
		}
	}
	var missing []netpolicy.Rule
	var names []string
	for _, r := range asked.Allow {
		if !granted[r.String()] {
			r.Origin = netpolicy.OriginManifest
			missing = append(missing, r)
			names = append(names, r.String())
		}
	}
	notice := o.Notice
	if notice == nil {
		notice = func(string) {}
	}
	if len(missing) == 0 {
		notice(fmt.Sprintf("the image's manifest asks for network egress to %s; all of it is allowed by the operator already", strings.Join(asked.Strings(), ", ")))
		return nil
	}
	if !o.AllowManifestNetwork {
		return &ManifestNetworkError{Missing: names}
	}
	notice(fmt.Sprintf("network egress from the image's manifest (mvm.toml), granted by the operator: %s", strings.Join(names, ", ")))
	o.Network = o.Network.WithRules(missing...)
	return nil
}

func nowUTC() time.Time { return time.Now().UTC() }

// Ports lists a sandbox's published ports.
func (r *Runtime) Ports(nameOrID string) ([]netpolicy.Publish, error) {
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, err
	}
	return netpolicy.ReadPorts(dir)
}

// Forward publishes a guest port of a running sandbox
// ([ADDR:][HOSTPORT:]GUESTPORT; a missing or 0 host port is chosen by the
// supervisor) and returns the bindings it added.
func (r *Runtime) Forward(ctx context.Context, nameOrID, spec string) ([]netpolicy.Publish, error) {
	if _, err := netpolicy.ParseForward(spec); err != nil {
		return nil, err
	}
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, err
	}
	before, _ := netpolicy.ReadPorts(dir)
	resp, err := sandbox.Control(ctx, dir, sandbox.Request{Op: "forward", Publish: spec})
	if err != nil {
		return nil, fmt.Errorf("forward on %s: %w", nameOrID, err)
	}
	if !resp.OK {
		return nil, errors.New(resp.Error)
	}
	after, err := netpolicy.ReadPorts(dir)
	if err != nil {
		return nil, err
	}
	old := map[netpolicy.Publish]bool{}
	for _, p := range before {
		old[p] = true
	}
	var added []netpolicy.Publish
	for _, p := range after {
		if !old[p] {
			added = append(added, p)
		}
	}
	return added, nil
}
