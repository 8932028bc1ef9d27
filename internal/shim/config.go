// Package shim is mvm's containerd runtime shim (runtime type
// io.containerd.mvm.v2): a containerd task service whose containers are
// mvm microVMs. containerd speaks to it over ttrpc (containerd v1.7's
// runtime/v2/shim, the protocol of containerd 1.6 and 1.7); every VM it
// boots goes through internal/runtime, so it is admitted by a signed plan
// and every process leaves a receipt and audit entries.
package shim

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/runtime"
)

// Annotations the shim reads from the OCI spec (a pod's or a container's
// annotations; `ctr run --annotation`).
const (
	// AnnotationProfile is the run profile: restrictive (the default),
	// standard, dev or permissive.
	AnnotationProfile = "io.mvm.profile"
	// AnnotationAllow is the egress allowlist, comma-separated (host,
	// *.domain, IP, CIDR, optionally :port). Without it the VM has no NIC.
	AnnotationAllow = "io.mvm.allow"
)

// DefaultProfile is the run profile of a container that names none: the
// code a cluster schedules is untrusted until someone says otherwise.
const DefaultProfile = plan.Restrictive

// Limits of what the shim accepts from a bundle.
const (
	maxConfigBytes = 4 << 20
	maxAllow       = 64
)

// readSpec reads a bundle's config.json, capped in size.
func readSpec(bundle string) (*specs.Spec, error) {
	f, err := os.Open(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("read OCI spec: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read OCI spec: %w", err)
	}
	if len(b) > maxConfigBytes {
		return nil, fmt.Errorf("%w: OCI spec %s is larger than %d bytes", errdefs.ErrInvalidArgument, f.Name(), maxConfigBytes)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%w: OCI spec %s: %v", errdefs.ErrInvalidArgument, f.Name(), err)
	}
	if s.Process == nil || len(s.Process.Args) == 0 {
		return nil, fmt.Errorf("%w: OCI spec %s has no process args", errdefs.ErrInvalidArgument, f.Name())
	}
	return &s, nil
}

// Resources is the VM size a spec maps to (0: the runtime's default).
type Resources struct {
	CPUs      int
	MemoryMiB int
}

// MapResources maps an OCI spec's limits to a VM with
// runtime.OCIResources: the CPU quota over its period, rounded up, is the
// number of vCPUs (1.5 CPUs: 2 vCPUs; no quota: 1); the memory limit,
// rounded up to a MiB and to at least 128 MiB, is the guest's memory (no
// limit: 256 MiB). The guest kernel's own use comes out of that memory, so
// a container gets somewhat less than its limit.
func MapResources(s *specs.Spec) Resources {
	if s.Linux == nil || s.Linux.Resources == nil {
		return Resources{}
	}
	var quota, mem int64
	var period uint64
	if c := s.Linux.Resources.CPU; c != nil {
		if c.Quota != nil {
			quota = *c.Quota
		}
		period = 100000 // the kernel's default CFS period
		if c.Period != nil && *c.Period > 0 {
			period = *c.Period
		}
	}
	if m := s.Linux.Resources.Memory; m != nil && m.Limit != nil {
		mem = *m.Limit
	}
	cpus, mib := runtime.OCIResources(quota, period, mem)
	return Resources{CPUs: cpus, MemoryMiB: mib}
}

// Policy is the run profile and egress a spec's annotations ask for.
type Policy struct {
	Profile string
	Allow   []string
}

// MapPolicy reads the io.mvm.* annotations. Whether the profile admits
// what is asked (an allowlist needs standard or more) is the plan's
// admission to decide, at boot.
func MapPolicy(annotations map[string]string) (Policy, error) {
	p := Policy{Profile: string(DefaultProfile)}
	if v, ok := annotations[AnnotationProfile]; ok {
		prof, err := plan.ParseProfile(strings.TrimSpace(v))
		if err != nil || strings.TrimSpace(v) == "" {
			return p, fmt.Errorf("%w: annotation %s=%q: want restrictive, standard, dev or permissive", errdefs.ErrInvalidArgument, AnnotationProfile, v)
		}
		p.Profile = string(prof)
	}
	if v := strings.TrimSpace(annotations[AnnotationAllow]); v != "" {
		for _, a := range strings.Split(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				p.Allow = append(p.Allow, a)
			}
		}
		if len(p.Allow) > maxAllow {
			return p, fmt.Errorf("%w: annotation %s names %d entries; at most %d", errdefs.ErrInvalidArgument, AnnotationAllow, len(p.Allow), maxAllow)
		}
	}
	return p, nil
}

// envMap turns an OCI env list into a map; a malformed entry is refused.
func envMap(env []string) (map[string]string, error) {
	out := make(map[string]string, len(env))
	for _, e := range env {
		k, v, ok := strings.Cut(e, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%w: environment entry without a name (want KEY=VALUE)", errdefs.ErrInvalidArgument)
		}
		out[k] = v
	}
	return out, nil
}

// terminalAllowed refuses a terminal (ctr -t, a pod's tty) under a run
// profile without a console, before anything boots.
func terminalAllowed(profile string) error {
	if plan.Profile(profile).AllowsConsole() {
		return nil
	}
	return fmt.Errorf("%w: a terminal needs a run profile that allows a console; run profile %q does not (annotate %s=dev)", errdefs.ErrFailedPrecondition, profile, AnnotationProfile)
}
