package cli

import (
	"fmt"

	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/secret"
	"github.com/mvm-sandbox/mvm/internal/volume"
	"github.com/spf13/pflag"
)

// attachFlags are -v, --allow-rw-mount and --secret of up and run.
type attachFlags struct {
	volumes       []string
	secrets       []string
	allowRW       bool
	allowManifest bool
	allowSecrets  bool
}

func (f *attachFlags) register(fl *pflag.FlagSet) {
	fl.StringArrayVarP(&f.volumes, "volume", "v", nil, "HOST_DIR:GUEST_PATH[:ro|:rw] (read-only by default) or VOLUME:GUEST_PATH[:ro|:rw] (repeatable); see docs/volumes.md")
	fl.BoolVar(&f.allowRW, "allow-rw-mount", false, "admit read-write host directories (:rw) under the standard and dev profiles (recorded in the plan)")
	fl.BoolVar(&f.allowManifest, "allow-manifest-mounts", false, "grant the host directories and volumes the build directory's mvm.toml asks for ([[mount]]); they are printed before boot and recorded in the plan")
	fl.BoolVar(&f.allowSecrets, "allow-manifest-secrets", false, "grant the secrets the build directory's mvm.toml ([secrets]) or a workload declaration (mvm.secret) asks for, by name; they are printed before boot and recorded in the plan")
	fl.StringArrayVar(&f.secrets, "secret", nil, "NAME, NAME:ENV_VAR or NAME:/run/secrets/FILE: hand a stored secret to the guest (repeatable); see docs/secrets.md")
}

// apply parses the flags into o; errors are usage errors.
func (f *attachFlags) apply(o *runtime.UpOptions) error {
	for _, v := range f.volumes {
		m, err := volume.ParseMountSpec(v)
		if err != nil {
			return err
		}
		o.Mounts = append(o.Mounts, m)
	}
	for _, s := range f.secrets {
		ref, err := secret.ParseRef(s)
		if err != nil {
			return err
		}
		o.Secrets = append(o.Secrets, ref)
	}
	o.AllowRWMount = f.allowRW
	o.AllowManifestMounts = f.allowManifest
	o.AllowManifestSecrets = f.allowSecrets
	return secret.CheckRefs(o.Secrets)
}

// attachJSON adds a sandbox's host directories, volumes and secret names
// to its --json shape.
func attachJSON(obj map[string]any, a *sandbox.Attachments) {
	mounts, vols, secs := []map[string]any{}, []map[string]any{}, []map[string]any{}
	if a != nil {
		mounts, vols = mountsJSON(a.Mounts, a.Volumes)
		for _, s := range a.Secrets {
			secs = append(secs, secretJSON(s.Name, s.Target(), s.Origin))
		}
	}
	obj["mounts"], obj["volumes"], obj["secrets"] = mounts, vols, secs
}

// planAttachJSON adds a plan's host directories, volumes, secret names
// and allow_rw_mount to a dry run's JSON.
func planAttachJSON(obj map[string]any, p *plan.Plan) {
	mounts, vols := mountsJSON(p.Mounts, p.Volumes)
	secs := []map[string]any{}
	for _, s := range p.Secrets {
		secs = append(secs, secretJSON(s.Name, s.Target, s.Origin))
	}
	obj["mounts"], obj["volumes"], obj["secrets"], obj["allow_rw_mount"] = mounts, vols, secs, p.AllowRWMount
	obj["allow_manifest_mounts"], obj["allow_manifest_secrets"] = p.AllowManifestMounts, p.AllowManifestSecrets
}

// secretJSON is a secret reference's --json shape (never a value).
func secretJSON(name, target, origin string) map[string]any {
	o := map[string]any{"name": name, "target": target}
	if origin != "" {
		o["origin"] = origin
	}
	return o
}

// mountsJSON is the --json shape of host directories and volumes; a
// mount a manifest asked for says so ("origin": "manifest").
func mountsJSON(ms []plan.Mount, vs []plan.VolumeMount) (mounts, vols []map[string]any) {
	mounts, vols = []map[string]any{}, []map[string]any{}
	for _, m := range ms {
		o := map[string]any{"host_path": m.HostPath, "guest_path": m.GuestPath, "read_only": m.ReadOnly}
		if m.Origin != "" {
			o["origin"] = m.Origin
		}
		mounts = append(mounts, o)
	}
	for _, v := range vs {
		o := map[string]any{"name": v.Name, "guest_path": v.GuestPath, "read_only": v.ReadOnly}
		if v.Origin != "" {
			o["origin"] = v.Origin
		}
		vols = append(vols, o)
	}
	return mounts, vols
}

func printPlanAttachments(app *App, p *plan.Plan) {
	mode := func(ro bool) string {
		if ro {
			return "ro"
		}
		return "rw"
	}
	from := func(origin string) string {
		if origin != "" {
			return ", from the " + origin
		}
		return ""
	}
	for _, m := range p.Mounts {
		fmt.Fprintf(app.Stdout, "  host dir:  %s -> %s (%s%s)\n", m.HostPath, m.GuestPath, mode(m.ReadOnly), from(m.Origin))
	}
	for _, v := range p.Volumes {
		fmt.Fprintf(app.Stdout, "  volume:    %s -> %s (%s%s)\n", v.Name, v.GuestPath, mode(v.ReadOnly), from(v.Origin))
	}
	for _, s := range p.Secrets {
		fmt.Fprintf(app.Stdout, "  secret:    %s -> %s%s\n", s.Name, s.Target, from(s.Origin))
	}
}
