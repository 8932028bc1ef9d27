package supervisor

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// volumeSerialPrefix names a volume's virtio-blk disk (runtime's
// volumeSerial: mvmvol0, mvmvol1, ...).
const volumeSerialPrefix = "mvmvol"

// checkPlanMounts refuses to boot a spec whose host directories or
// volumes are not the ones the admitted plan lists, in order, with the same
// host path (volume name) and mode: spec.json is written beside the plan
// and must not widen what was admitted (a share's path or its read-only
// flag).
func checkPlanMounts(spec backend.Spec, p *plan.Plan) error {
	refuse := func(format string, a ...any) error {
		return fmt.Errorf("mounts: %s; spec.json is not what the plan admitted, refusing to boot", fmt.Sprintf(format, a...))
	}
	shares := spec.Shares
	// A bundle sandbox's root directory (plan.RootDir) is its last share,
	// read-write, under its own tag; nothing else may use that tag.
	if n := len(shares); p.RootDir != nil {
		if n == 0 || shares[n-1].Tag != sandbox.RootDirTag || filepath.Clean(shares[n-1].HostPath) != p.RootDir.HostPath || shares[n-1].ReadOnly {
			return refuse("the root directory share is not the plan's root_dir %s", p.RootDir.HostPath)
		}
		shares = shares[:n-1]
	}
	for _, s := range shares {
		if s.Tag == sandbox.RootDirTag {
			return refuse("a root directory share without a root_dir in the plan")
		}
	}
	if len(shares) != len(p.Mounts) {
		return refuse("%d host directories in the spec, %d in the plan", len(shares), len(p.Mounts))
	}
	for i, s := range shares {
		m := p.Mounts[i]
		if filepath.Clean(s.HostPath) != m.HostPath || s.ReadOnly != m.ReadOnly {
			return refuse("host directory #%d is %s (read-only %v), the plan admitted %s (read-only %v)", i+1, s.HostPath, s.ReadOnly, m.HostPath, m.ReadOnly)
		}
	}
	var vols []backend.Disk
	for _, d := range spec.Disks {
		if strings.HasPrefix(d.Serial, volumeSerialPrefix) {
			vols = append(vols, d)
		}
	}
	if len(vols) != len(p.Volumes) {
		return refuse("%d volumes in the spec, %d in the plan", len(vols), len(p.Volumes))
	}
	for i, d := range vols {
		v := p.Volumes[i]
		name := filepath.Base(filepath.Dir(d.Path))
		if d.Serial != fmt.Sprintf("%s%d", volumeSerialPrefix, i) || filepath.Base(d.Path) != "disk.img" ||
			filepath.Base(filepath.Dir(filepath.Dir(d.Path))) != "volumes" || name != v.Name || d.ReadOnly != v.ReadOnly {
			return refuse("volume #%d is %s (read-only %v), the plan admitted %s (read-only %v)", i+1, d.Path, d.ReadOnly, v.Name, v.ReadOnly)
		}
	}
	return nil
}
