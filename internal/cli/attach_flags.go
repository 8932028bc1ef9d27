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
	volumes []string
	secrets []string
	allowRW bool
}

func (f *attachFlags) register(fl *pflag.FlagSet) {
	fl.StringArrayVarP(&f.volumes, "volume", "v", nil, "HOST_DIR:GUEST_PATH[:ro|:rw] (read-only by default) or VOLUME:GUEST_PATH[:ro|:rw] (repeatable); see docs/volumes.md")
	fl.BoolVar(&f.allowRW, "allow-rw-mount", false, "admit read-write host directories (:rw) under the standard and dev profiles (recorded in the plan)")
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
	return secret.CheckRefs(o.Secrets)
}

// attachJSON adds a sandbox's host directories, volumes and secret names
// to its --json shape.
func attachJSON(obj map[string]any, a *sandbox.Attachments) {
	mounts, vols, secs := []map[string]any{}, []map[string]any{}, []map[string]any{}
	if a != nil {
		for _, m := range a.Mounts {
			mounts = append(mounts, map[string]any{"host_path": m.HostPath, "guest_path": m.GuestPath, "read_only": m.ReadOnly})
		}
		for _, v := range a.Volumes {
			vols = append(vols, map[string]any{"name": v.Name, "guest_path": v.GuestPath, "read_only": v.ReadOnly})
		}
		for _, s := range a.Secrets {
			secs = append(secs, map[string]any{"name": s.Name, "target": s.Target()})
		}
	}
	obj["mounts"], obj["volumes"], obj["secrets"] = mounts, vols, secs
}

// planAttachJSON adds a plan's host directories, volumes, secret names
// and allow_rw_mount to a dry run's JSON.
func planAttachJSON(obj map[string]any, p *plan.Plan) {
	mounts, vols, secs := []map[string]any{}, []map[string]any{}, []map[string]any{}
	for _, m := range p.Mounts {
		mounts = append(mounts, map[string]any{"host_path": m.HostPath, "guest_path": m.GuestPath, "read_only": m.ReadOnly})
	}
	for _, v := range p.Volumes {
		vols = append(vols, map[string]any{"name": v.Name, "guest_path": v.GuestPath, "read_only": v.ReadOnly})
	}
	for _, s := range p.Secrets {
		secs = append(secs, map[string]any{"name": s.Name, "target": s.Target})
	}
	obj["mounts"], obj["volumes"], obj["secrets"], obj["allow_rw_mount"] = mounts, vols, secs, p.AllowRWMount
}

func printPlanAttachments(app *App, p *plan.Plan) {
	mode := func(ro bool) string {
		if ro {
			return "ro"
		}
		return "rw"
	}
	for _, m := range p.Mounts {
		fmt.Fprintf(app.Stdout, "  host dir:  %s -> %s (%s)\n", m.HostPath, m.GuestPath, mode(m.ReadOnly))
	}
	for _, v := range p.Volumes {
		fmt.Fprintf(app.Stdout, "  volume:    %s -> %s (%s)\n", v.Name, v.GuestPath, mode(v.ReadOnly))
	}
	for _, s := range p.Secrets {
		fmt.Fprintf(app.Stdout, "  secret:    %s -> %s\n", s.Name, s.Target)
	}
}
