package agentapi

import (
	"context"
	"testing"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/guestid"
)

// TestRestoredNeedsCapableAgent: an agent that does not offer Restored
// (a snapshot made by an older agent) is refused on the host, and a bad
// identity is refused before anything is sent: the client has no
// connection here, so reaching the wire would panic.
func TestRestoredNeedsCapableAgent(t *testing.T) {
	id, err := guestid.New("clone", false)
	if err != nil {
		t.Fatal(err)
	}
	old := &Client{Hello: &pb.HelloResponse{AgentVersion: "0.0.9", Capabilities: []string{"exec", "fs"}}}
	if _, err := old.Restored(context.Background(), id); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("agent without %q: %v, want failed precondition", CapRestored, err)
	}
	capable := &Client{Hello: &pb.HelloResponse{Capabilities: Capabilities}}
	bad := id
	bad.Hostname = "a/b"
	if _, err := capable.Restored(context.Background(), bad); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad identity: %v, want invalid argument", err)
	}
}
