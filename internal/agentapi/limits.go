// Package agentapi holds what the host and the guest agent share: the
// protocol (agentpb), the channel handshake, limits, and the host-side
// client.
package agentapi

import (
	"time"

	"github.com/mvm-sandbox/mvm/internal/safetar"
)

const (
	// ProtocolVersion is the agent protocol this build speaks.
	ProtocolVersion = 1
	// MinProtocolVersion is the oldest protocol this build accepts.
	MinProtocolVersion = 1

	// MaxMessageBytes caps one gRPC message in either direction. The host
	// treats anything larger from the guest as an error.
	MaxMessageBytes = 4 << 20
	// ChunkBytes is the size of one stdout/stderr/stdin chunk on the wire.
	ChunkBytes = 64 << 10

	// PortName is the name of the virtio-serial port the agent serves on.
	PortName = "mvm.agent"
	// VsockPort is the vsock port the agent listens on where vsock exists.
	VsockPort = 5252

	// HandshakeInterval is how often the guest repeats its hello until the
	// host acknowledges it.
	HandshakeInterval = 100 * time.Millisecond
)

// Caps of the file and process RPCs (docs/guest-rpc.md). Hitting one gives
// a typed error (codes.ResourceExhausted, FsError TOO_LARGE), never
// unbounded memory.
const (
	// MaxPathBytes caps every path in a request and every archive member
	// name or symlink target.
	MaxPathBytes = safetar.MaxNameBytes
	// MaxListEntries caps one ListDir answer; more sets truncated.
	MaxListEntries = 10000
	// MaxArchiveMembers caps the members of one extracted tar stream.
	MaxArchiveMembers = safetar.DefaultMaxMembers
	// MaxArchiveDepth caps how many directories deep an archive member is.
	MaxArchiveDepth = safetar.MaxDepth
	// DefaultCopyOutBytes caps the file bytes of one copy out of a guest
	// unless the caller gives another cap (mvmctl cp --max-bytes).
	DefaultCopyOutBytes = 4 << 30
	// MaxProcs caps background processes running at once in a guest.
	MaxProcs = 64
	// MaxExitedProcs caps exited background processes kept for ProcWait.
	MaxExitedProcs = 64
	// ProcRetention is how long an exited background process is kept.
	ProcRetention = 10 * time.Minute
	// ProcOutputBytes is the bounded buffer of each output stream (stdout,
	// stderr) of one background process: the most recent bytes are kept,
	// older ones are dropped and reported to readers as a gap.
	ProcOutputBytes = 256 << 10
	// MaxProcWaiters caps concurrent ProcWait streams on one process.
	MaxProcWaiters = 16
)

// Capabilities this agent build offers.
var Capabilities = []string{"exec", "exec_tty", "stdin", "signal", "readiness", "stats", "shutdown",
	"fs", "archive", "proc", "discard", "bundle", CapRestored}

// Caps of bundle processes (ExecStart.bundle) and of Pids.
const (
	// MaxPids caps one Pids answer; the host refuses more.
	MaxPids = 4096
	// MaxGroups caps a bundle process's additional groups.
	MaxGroups = 256
	// MaxProcessIDBytes caps ExecStart.id.
	MaxProcessIDBytes = 128
)

// CapRestored is the capability of an agent that serves Restored (fresh
// entropy, clock, hostname, machine-id and MAC after a snapshot restore).
const CapRestored = "restored"
