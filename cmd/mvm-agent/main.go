// Command mvm-agent is the guest agent: PID 1 inside every mvm microVM.
// It must be built statically (CGO_ENABLED=0).
package main

import "github.com/mvm-sandbox/mvm/internal/agent"

func main() { agent.Main() }
