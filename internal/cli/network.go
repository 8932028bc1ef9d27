package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func init() {
	register(newPortCmd)
	register(newForwardCmd)
	register(newEgressHelperCmd)
}

// netFlags are the network flags of `up` and `run`.
type netFlags struct {
	network         string
	allow           []string
	publish         []string
	allowPrivate    bool
	manifestNetwork bool
}

func (f *netFlags) register(fl *pflag.FlagSet, publish bool) {
	fl.StringVar(&f.network, "network", "", "network: none (default: no network device), unrestricted (needs "+netpolicy.AckUnrestrictedEnv+"=1) or a preset ("+strings.Join(netpolicy.PresetNames(), ", ")+"); see docs/network.md")
	fl.StringArrayVar(&f.allow, "allow", nil, "allow egress to HOST[:PORT] (port 443 by default; repeatable); TLS SNI or HTTP Host must name HOST")
	fl.BoolVar(&f.allowPrivate, "allow-private", false, "let allowed names resolve to private (10/8, 172.16/12, 192.168/16), CGNAT (100.64/10) and IPv6 unique-local addresses, e.g. an internal mirror; recorded in the plan")
	fl.BoolVar(&f.manifestNetwork, "allow-manifest-network", false, "grant the network egress the image's mvm.toml (network/allow keys) or a workload declaration asks for; it is printed before boot")
	if publish {
		fl.StringArrayVarP(&f.publish, "publish", "p", nil, "publish a guest port: [ADDR:]HOSTPORT:GUESTPORT, bound to 127.0.0.1 unless ADDR is given (repeatable)")
	}
}

// apply sets o's network from the flags: the operator's own request
// (OriginCLI), consent to the manifest's, and where notices go.
func (f *netFlags) apply(app *App, o *runtime.UpOptions) error {
	cfg, err := f.config(app)
	if err != nil {
		return err
	}
	o.Network = cfg
	o.AllowManifestNetwork = f.manifestNetwork
	o.Notice = func(msg string) { fmt.Fprintln(app.Stderr, "mvmctl: "+msg) }
	return nil
}

// manifestNetworkHint adds what to do to a refused manifest network or
// manifest mounts.
func manifestNetworkHint(err error) error {
	var mm *runtime.ManifestMountsError
	if errors.As(err, &mm) {
		give := make([]string, len(mm.Missing))
		for i, m := range mm.Missing {
			give[i] = "-v " + m
		}
		return fmt.Errorf("%w\nto grant it: --allow-manifest-mounts (or give %s)", err, strings.Join(give, " "))
	}
	var ms *runtime.ManifestSecretsError
	if errors.As(err, &ms) {
		give := make([]string, len(ms.Missing))
		for i, m := range ms.Missing {
			give[i] = "--secret " + m
		}
		return fmt.Errorf("%w\nto grant it: --allow-manifest-secrets (or give %s)", err, strings.Join(give, " "))
	}
	var me *runtime.ManifestNetworkError
	if !errors.As(err, &me) {
		return err
	}
	allow := make([]string, len(me.Missing))
	for i, m := range me.Missing {
		allow[i] = "--allow " + m
	}
	return fmt.Errorf("%w\nto grant it: --allow-manifest-network (or give %s)", err, strings.Join(allow, " "))
}

// config builds the sandbox's network, warning on stderr when it is
// unrestricted.
func (f *netFlags) config(app *App) (netpolicy.Config, error) {
	cfg, warning, err := netpolicy.Build(netpolicy.Request{Network: f.network, Allow: f.allow, Publish: f.publish,
		Origin: netpolicy.OriginCLI, AllowPrivate: f.allowPrivate}, nil)
	if err != nil {
		return cfg, err
	}
	if warning != "" {
		fmt.Fprintln(app.Stderr, "mvmctl: "+warning)
	}
	return cfg, nil
}

func newPortCmd(app *App) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "port NAME",
		Short: "List a sandbox's published ports",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			if _, err := rt.Get(args[0]); err != nil {
				return exitCode(ExitNotFound, err)
			}
			ports, err := rt.Ports(args[0])
			if err != nil {
				return err
			}
			if jsonOut {
				rows := make([]map[string]any, 0, len(ports))
				for _, p := range ports {
					rows = append(rows, map[string]any{"host_addr": p.HostAddr, "host_port": p.HostPort, "guest_port": p.GuestPort, "proto": "tcp"})
				}
				return writeJSON(app.Stdout, rows)
			}
			for _, p := range ports {
				fmt.Fprintf(app.Stdout, "%d/tcp -> %s:%d\n", p.GuestPort, p.HostAddr, p.HostPort)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print a JSON array")
	return cmd
}

func newForwardCmd(app *App) *cobra.Command {
	var publish []string
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "forward NAME -p [ADDR:][HOSTPORT:]GUESTPORT",
		Short: "Publish a guest port of a running sandbox on the host (127.0.0.1 unless ADDR is given)",
		Long: `forward adds a port binding to a running sandbox that has a network
device (one started with -p or --allow). The binding lasts as long as the
sandbox; ` + "`mvmctl port NAME`" + ` lists them.`,
		Example: `  mvmctl up --name web -p 8080:80
  mvmctl forward web -p 8443:443
  mvmctl forward web -p 3000 --json     # a free host port is chosen`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(publish) == 0 {
				return exitCode(ExitUsage, errors.New("give at least one -p [ADDR:][HOSTPORT:]GUESTPORT"))
			}
			for _, p := range publish {
				if _, err := netpolicy.ParseForward(p); err != nil {
					return exitCode(ExitUsage, err)
				}
			}
			rt, err := app.runtime()
			if err != nil {
				return err
			}
			if _, err := rt.Get(args[0]); err != nil {
				return exitCode(ExitNotFound, err)
			}
			var added []netpolicy.Publish
			for _, p := range publish {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				a, err := rt.Forward(ctx, args[0], p)
				cancel()
				if err != nil {
					return exitCode(1, err)
				}
				added = append(added, a...)
			}
			if jsonOut {
				// The bindings this call added (`mvmctl port` lists all).
				rows := []map[string]any{}
				for _, p := range added {
					rows = append(rows, map[string]any{"host_addr": p.HostAddr, "host_port": p.HostPort, "guest_port": p.GuestPort, "proto": "tcp"})
				}
				return writeJSON(app.Stdout, rows)
			}
			ports, err := rt.Ports(args[0])
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 4, 1, ' ', 0)
			for _, p := range ports {
				fmt.Fprintf(tw, "%d/tcp\t-> %s:%d\n", p.GuestPort, p.HostAddr, p.HostPort)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringArrayVarP(&publish, "publish", "p", nil, "[ADDR:][HOSTPORT:]GUESTPORT (repeatable); a missing or 0 host port picks a free one")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the bindings this call added as JSON")
	return cmd
}

// newEgressHelperCmd is the command QEMU runs for each guest connection
// on an allowed forward; its stdin is the connection. It must write
// nothing: its stderr also reaches the guest.
func newEgressHelperCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:                netpolicy.HelperCommand + " SOCKET TARGET",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return &ExitError{Code: ExitUsage, Silent: true}
			}
			if err := netpolicy.RunHelper(args[0], args[1]); err != nil {
				return &ExitError{Code: 1, Silent: true}
			}
			os.Stdout.Close()
			return nil
		},
	}
}
