package shim

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/mvm-sandbox/mvm/internal/runtime"
)

// bootRoot sets what the VM boots as its root: the bundle's rootfs.
// INTERIM until the runtime's bundle root (shimguest) lands: the VM boots
// mvm's minimal image and the bundle's rootfs is not used.
func bootRoot(o *runtime.UpOptions, req BootRequest) error {
	return nil
}

// processOptions applies what of the OCI process the runtime takes
// beyond argv, env, cwd and terminal. INTERIM (see bootRoot).
func processOptions(o *runtime.ExecOptions, p *specs.Process) {}
