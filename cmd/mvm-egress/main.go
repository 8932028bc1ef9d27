// Command mvm-egress is the helper QEMU starts for each guest connection
// on an allowed forward (a guestfwd `cmd:`): its stdin is the connection,
// which it hands to the sandbox supervisor's egress proxy, then exits. It
// is a binary of its own, not `mvmctl __egress`, because QEMU starts one
// per connection: this one links only what the handoff needs, so it
// starts in about a millisecond instead of mvmctl's ten (docs/decisions.md).
// It writes nothing: its stderr would reach the guest.
package main

import (
	"os"

	"github.com/mvm-sandbox/mvm/internal/netpolicy/handoff"
)

func main() {
	if len(os.Args) != 3 {
		os.Exit(2)
	}
	if err := handoff.Run(os.Args[1], os.Args[2]); err != nil {
		os.Exit(1)
	}
}
