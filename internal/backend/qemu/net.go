package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/backend"
)

// NetdevID names the guest's one user-mode network backend.
const NetdevID = "n0"

// netArgs returns the -netdev and -device arguments of n (none for nil):
// QEMU user networking without IPv6, restricted when asked, with its
// guest and host forwards.
func netArgs(n *backend.Network) []string {
	if n == nil {
		return nil
	}
	opts := []string{"user", "id=" + NetdevID, "ipv6=off"}
	if n.Restrict {
		opts = append(opts, "restrict=on")
	}
	for _, h := range n.HostFwds {
		opts = append(opts, "hostfwd="+hostFwdRule(h))
	}
	for _, g := range n.GuestFwds {
		// QEMU option values escape ',' as ",,".
		opts = append(opts, fmt.Sprintf("guestfwd=tcp:%s:%d-cmd:%s", g.Addr, g.Port, strings.ReplaceAll(g.Cmd, ",", ",,")))
	}
	return []string{"-netdev", strings.Join(opts, ","), "-device", "virtio-net-device,netdev=" + NetdevID}
}

func hostFwdRule(h backend.HostFwd) string {
	return "tcp:" + h.HostAddr + ":" + strconv.Itoa(h.HostPort) + "-:" + strconv.Itoa(h.GuestPort)
}

// HostFwdAdd publishes a guest port on a running VM (HMP hostfwd_add).
func (m *Machine) HostFwdAdd(ctx context.Context, h backend.HostFwd) error {
	q, err := m.monitor(ctx)
	if err != nil {
		return err
	}
	out, err := q.run(ctx, "human-monitor-command", map[string]any{
		"command-line": "hostfwd_add " + NetdevID + " " + hostFwdRule(h),
	})
	if err != nil {
		return err
	}
	var msg string
	json.Unmarshal(out, &msg)
	if msg = strings.TrimSpace(msg); msg != "" {
		return fmt.Errorf("hostfwd_add: %s", msg)
	}
	return nil
}
