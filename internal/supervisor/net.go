package supervisor

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// netState is the supervisor's side of a sandbox's network.
type netState struct {
	cfg   netpolicy.Config
	proxy *netpolicy.Proxy
	l     net.Listener

	mu    sync.Mutex
	ports []netpolicy.Publish
}

// startNetwork takes the sandbox's admitted network policy and, when the
// guest gets a NIC, starts the egress proxy on EgressSocket (in the
// sandbox directory, which is the working directory) and adds the NIC to
// spec.
func (s *supervisor) startNetwork(spec *backend.Spec, cfg netpolicy.Config) error {
	ns := &netState{cfg: cfg, ports: append([]netpolicy.Publish(nil), cfg.Publish...)}
	s.net = ns
	if !cfg.HasNIC() {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	n, err := cfg.VMNetwork(netpolicy.HelperExe(exe))
	if err != nil {
		return err
	}
	if cfg.Mode == netpolicy.Allowlist {
		os.Remove(netpolicy.EgressSocket)
		l, err := net.Listen("unix", netpolicy.EgressSocket)
		if err != nil {
			return fmt.Errorf("egress proxy: %w", err)
		}
		ns.l = l
		ns.proxy = netpolicy.NewProxy(cfg, netpolicy.Options{
			Audit: func(kind string, fields map[string]any) { s.events(kind, s.snapshot(), fields) },
		})
		go ns.proxy.Serve(l)
	}
	spec.Network = n
	spec.Cmdline = strings.TrimSpace(spec.Cmdline + " " + cfg.KernelArg())
	if err := netpolicy.WritePorts(s.dir, ns.ports); err != nil {
		return err
	}
	for _, p := range ns.ports {
		s.events("net.port_published", s.snapshot(), publishFields(p))
	}
	return nil
}

func publishFields(p netpolicy.Publish) map[string]any {
	return map[string]any{"host_addr": p.HostAddr, "host_port": p.HostPort, "guest_port": p.GuestPort}
}

// stopNetwork closes the egress proxy's socket and writes the audit
// events still queued.
func (s *supervisor) stopNetwork() {
	if s.net != nil && s.net.l != nil {
		s.net.l.Close()
		s.net.proxy.Close(2 * time.Second)
	}
}

// forward publishes one more guest port on the running VM.
func (s *supervisor) forward(ctx context.Context, spec string) sandbox.Response {
	ns := s.net
	if ns == nil || !ns.cfg.HasNIC() {
		return sandbox.Response{Error: "sandbox has no network device: publish ports at `up` with -p (or give it --allow) to be able to forward later"}
	}
	p, err := netpolicy.ParseForward(spec)
	if err != nil {
		return sandbox.Response{Error: err.Error()}
	}
	// A port published later obeys the same run profile rule as one in the
	// plan.
	if err := s.plan.RunProfile.CheckPublish(plan.Port{HostAddr: p.HostAddr, HostPort: p.HostPort, GuestPort: p.GuestPort}); err != nil {
		return sandbox.Response{Error: "refused by policy: " + err.Error()}
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if p.HostPort == 0 {
		// Pick a free port on the requested address. Another process could
		// take it before QEMU binds it; hostfwd_add then fails and says so.
		l, err := net.Listen("tcp4", net.JoinHostPort(p.HostAddr, "0"))
		if err != nil {
			return sandbox.Response{Error: fmt.Sprintf("pick a host port on %s: %v", p.HostAddr, err)}
		}
		p.HostPort = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	for _, q := range ns.ports {
		if q.HostPort == p.HostPort && q.HostAddr == p.HostAddr {
			return sandbox.Response{Error: fmt.Sprintf("%s:%d is already published (to guest port %d)", p.HostAddr, p.HostPort, q.GuestPort)}
		}
	}
	if len(ns.ports) >= 64 {
		return sandbox.Response{Error: "too many published ports (64)"}
	}
	if err := s.vm.HostFwdAdd(ctx, backend.HostFwd{HostAddr: p.HostAddr, HostPort: p.HostPort, GuestPort: p.GuestPort}); err != nil {
		return sandbox.Response{Error: err.Error()}
	}
	ns.ports = append(ns.ports, p)
	if err := netpolicy.WritePorts(s.dir, ns.ports); err != nil {
		return sandbox.Response{Error: err.Error()}
	}
	s.events("net.port_published", s.snapshot(), publishFields(p))
	return sandbox.Response{OK: true, State: s.snapshot()}
}
