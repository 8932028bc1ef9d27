package runtime

import (
	"path/filepath"

	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// NetInfo is what a sandbox was given of the network: the admitted mode
// and the host ports published to it.
type NetInfo struct {
	Mode  string
	Ports []netpolicy.Publish
}

// Net reports a sandbox's network mode ("none" when it has no network
// device) and its published ports.
func (r *Runtime) Net(st *sandbox.State) NetInfo {
	dir := r.Layout.Dir(st.ID)
	info := NetInfo{Mode: string(netpolicy.None)}
	var spec sandbox.Spec
	if sandbox.ReadJSON(filepath.Join(dir, sandbox.SpecFile), &spec) == nil && spec.Network != "" {
		info.Mode = spec.Network
	}
	info.Ports, _ = netpolicy.ReadPorts(dir)
	return info
}
