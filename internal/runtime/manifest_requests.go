package runtime

import (
	"fmt"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/manifest"
	"github.com/mvm-sandbox/mvm/internal/secret"
	"github.com/mvm-sandbox/mvm/internal/volume"
)

// ManifestMountsError refuses a boot whose build directory's manifest
// asks for host directories or volumes the operator has not granted.
type ManifestMountsError struct {
	// Missing are the mounts asked for and not granted, as -v would
	// write them.
	Missing []string
}

func (e *ManifestMountsError) Error() string {
	return fmt.Sprintf("the image's manifest (mvm.toml) asks to mount %s, which the operator has not granted; "+
		"a manifest is a request: grant its mounts explicitly, or give the same mounts yourself",
		strings.Join(e.Missing, ", "))
}

// Unwrap makes it a policy refusal.
func (e *ManifestMountsError) Unwrap() error { return ErrPolicy }

// ManifestSecretsError refuses a boot whose build directory's manifest
// asks for secrets the operator has not granted.
type ManifestSecretsError struct {
	// Missing are the references asked for and not granted, as --secret
	// would write them (NAME:TARGET).
	Missing []string
}

func (e *ManifestSecretsError) Error() string {
	return fmt.Sprintf("the image's manifest (mvm.toml) asks for the secret(s) %s, which the operator has not granted; "+
		"a manifest is a request: grant its secrets explicitly, or hand over the same secrets yourself",
		strings.Join(e.Missing, ", "))
}

// Unwrap makes it a policy refusal.
func (e *ManifestSecretsError) Unwrap() error { return ErrPolicy }

// describeMount is a mount as the operator reads it in a notice.
func describeMount(m volume.MountSpec) string {
	mode := "rw"
	if m.ReadOnly {
		mode = "ro"
	}
	if m.Volume {
		return fmt.Sprintf("volume %s -> %s (%s)", m.Source, m.Target, mode)
	}
	return fmt.Sprintf("host directory %s -> %s (%s)", m.Source, m.Target, mode)
}

// manifestAttachments applies the [[mount]] and [secrets] tables of the
// manifest in the build directory o.Image (none for templates, built images, digests, OCI
// references, declarations, or NoBuildDir). A manifest is untrusted: every
// mount it asks for is shown (Notice) before anything is created and
// added only with the operator's consent (AllowManifestMounts), unless the
// operator's own -v already gives the same mount. The host-path rules of
// -v (ResolveAttachments) and the profile's rules (admission) apply to
// them as to any mount: consent never makes a read-write host directory
// admissible without --allow-rw-mount. Secrets likewise: shown by name and
// target, added only with AllowManifestSecrets or when the operator's
// --secret hands over the same one.
func (r *Runtime) manifestAttachments(o *UpOptions) error {
	if o.NoBuildDir || o.Image == "" || !IsBuildDir(o.Image) {
		return nil
	}
	m, err := manifest.Load(o.Image)
	if err != nil {
		return imageError(err)
	}
	if err := manifestMounts(o, m); err != nil {
		return err
	}
	return manifestSecrets(o, m)
}

// manifestMounts is manifestAttachments for [[mount]].
func manifestMounts(o *UpOptions, m *manifest.Manifest) error {
	if len(m.Mounts) == 0 {
		return nil
	}
	same := func(a, b volume.MountSpec) bool {
		return a.Source == b.Source && a.Target == b.Target && a.ReadOnly == b.ReadOnly && a.Volume == b.Volume
	}
	var asked, missing []string
	var add []volume.MountSpec
	for _, mm := range m.Mounts {
		asked = append(asked, describeMount(mm))
		covered := false
		for _, have := range o.Mounts {
			if same(have, mm) {
				covered = true
			}
		}
		if !covered {
			add = append(add, mm)
			missing = append(missing, mm.String())
		}
	}
	notice := o.Notice
	if notice == nil {
		notice = func(string) {}
	}
	if len(add) == 0 {
		notice("the image's manifest (mvm.toml) asks to mount " + strings.Join(asked, ", ") + "; the operator gives all of it already")
		return nil
	}
	if !o.AllowManifestMounts {
		return &ManifestMountsError{Missing: missing}
	}
	var granted []string
	for _, mm := range add {
		granted = append(granted, describeMount(mm))
	}
	notice("mounts from the image's manifest (mvm.toml), granted by the operator: " + strings.Join(granted, ", "))
	o.Mounts = append(o.Mounts, add...)
	return nil
}

// manifestSecrets is manifestAttachments for [secrets]: a repository that
// can ask for the operator's API keys can send them wherever its network
// reaches, so each one is the operator's decision.
func manifestSecrets(o *UpOptions, m *manifest.Manifest) error {
	if len(m.Secrets) == 0 {
		return nil
	}
	var asked, missing []string
	var add []secret.Ref
	for _, ref := range m.Secrets {
		asked = append(asked, ref.String())
		covered := false
		for _, have := range o.Secrets {
			if have.Name == ref.Name && have.Target() == ref.Target() {
				covered = true
			}
		}
		if !covered {
			add = append(add, ref)
			missing = append(missing, ref.String())
		}
	}
	notice := o.Notice
	if notice == nil {
		notice = func(string) {}
	}
	if len(add) == 0 {
		notice("the image's manifest (mvm.toml) asks for the secret(s) " + strings.Join(asked, ", ") + "; the operator hands over all of them already")
		return nil
	}
	if !o.AllowManifestSecrets {
		return &ManifestSecretsError{Missing: missing}
	}
	notice("secrets from the image's manifest (mvm.toml), granted by the operator (name:target): " + strings.Join(missing, ", "))
	o.Secrets = append(o.Secrets, add...)
	return nil
}
