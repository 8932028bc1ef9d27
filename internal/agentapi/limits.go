// Package agentapi holds what the host and the guest agent share: the
// protocol (agentpb), the channel handshake, limits, and the host-side
// client.
package agentapi

import "time"

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

// Capabilities this agent build offers.
var Capabilities = []string{"exec", "exec_tty", "stdin", "signal", "readiness", "stats", "shutdown"}
