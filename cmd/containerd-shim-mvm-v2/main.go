// Command containerd-shim-mvm-v2 is mvm's containerd runtime shim
// (runtime type io.containerd.mvm.v2): every container it runs is an mvm
// microVM, admitted by a signed plan, with receipts and audit entries.
// containerd runs it as `start` (spawn the shim, print its address),
// `delete` (clean up after a shim that is gone) and as the long-lived shim
// serving the task API over ttrpc.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/plugin"
	"github.com/containerd/containerd/runtime/v2/shim"

	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	mvmshim "github.com/mvm-sandbox/mvm/internal/shim"
)

func newVMs() (*mvmshim.RuntimeVMs, error) {
	r, err := runtime.New(paths.FromEnv())
	if err != nil {
		return nil, err
	}
	return mvmshim.NewRuntimeVMs(r)
}

func init() {
	plugin.Register(&plugin.Registration{
		Type:     plugin.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugin.EventPlugin, plugin.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (interface{}, error) {
			pp, err := ic.GetByID(plugin.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugin.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			vms, err := newVMs()
			if err != nil {
				return nil, err
			}
			publisher := pp.(shim.Publisher)
			sd := ss.(shutdown.Service)
			ns, _ := namespaces.Namespace(ic.Context)
			svc := mvmshim.NewService(context.WithoutCancel(ic.Context), vms, ns, sd.Shutdown)
			pctx := namespaces.WithNamespace(context.Background(), ns)
			go mvmshim.Forward(pctx, svc.Events(), func(ctx context.Context, topic string, evt any) error {
				return publisher.Publish(ctx, topic, evt.(events.Event))
			}, func() { publisher.Close() })
			sd.RegisterCallback(func(context.Context) error {
				svc.CloseEvents()
				return nil
			})
			return svc, nil
		},
	})
}

func main() {
	down := func(ctx context.Context, id string) error {
		vms, err := newVMs()
		if err != nil {
			return err
		}
		return vms.Down(ctx, id)
	}
	// The shim reaps nothing and is no subreaper: the VMs' supervisors
	// are mvm's, each waited for by the runtime, and a supervisor's VMM
	// dies with it.
	shim.RunManager(context.Background(), mvmshim.Manager{Down: down}, func(c *shim.Config) {
		c.NoSubreaper = true
		c.NoReaper = true
	})
	fmt.Fprintln(os.Stderr) // unreachable in practice: RunManager exits
}
