// Package guestid makes and checks a guest's identity: what must differ
// between two sandboxes restored from one memory snapshot (fresh RNG seed,
// wall clock, hostname, machine-id, NIC MAC). The host makes one with New
// and hands it to the agent with the Restored RPC; the agent checks it
// with Validate before it touches anything.
//
// It imports only the standard library, so the guest agent can use it.
package guestid

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"time"
)

const (
	// EntropyBytes is how much host randomness New hands to a guest:
	// 512 bits, twice the kernel's crng key, credited in full.
	EntropyBytes = 64
	// MinEntropyBytes and MaxEntropyBytes bound the entropy of a
	// Restored request (the agent refuses anything outside them).
	MinEntropyBytes = 32
	MaxEntropyBytes = 512
	// MaxHostnameBytes is a DNS label (and below the kernel's 64).
	MaxHostnameBytes = 63
	// MachineIDHexDigits is the length of /etc/machine-id (without "\n").
	MachineIDHexDigits = 32
	// MACBytes is an Ethernet address.
	MACBytes = 6
)

// Identity is what a restored guest takes on.
type Identity struct {
	// Entropy is fresh host randomness to mix into the guest's RNG.
	Entropy []byte
	// UnixNanos is the host's wall clock when the identity was made.
	UnixNanos int64
	// Hostname is a DNS label: [a-z0-9-], not starting or ending with '-'.
	Hostname string
	// MachineID is 32 lowercase hex digits, not all zero; empty keeps the
	// guest's (a sandbox resumed from its own saved state is the same
	// machine).
	MachineID string
	// MAC, when set, is the NIC's new address: locally administered,
	// unicast. Nil for a guest without a NIC.
	MAC net.HardwareAddr
}

// New makes a fresh identity for the sandbox called name: entropy and
// machine-id from crypto/rand, the host's clock, the hostname Hostname
// gives, and with nic a random locally administered MAC.
func New(name string, nic bool) (Identity, error) {
	id := Identity{Entropy: make([]byte, EntropyBytes)}
	if _, err := rand.Read(id.Entropy); err != nil {
		return Identity{}, fmt.Errorf("guest identity: entropy: %w", err)
	}
	h, err := Hostname(name)
	if err != nil {
		return Identity{}, err
	}
	id.Hostname = h
	mid := make([]byte, MachineIDHexDigits/2)
	if _, err := rand.Read(mid); err != nil {
		return Identity{}, fmt.Errorf("guest identity: machine-id: %w", err)
	}
	// A v4 UUID's version and variant bits, as systemd-machine-id-setup
	// writes them.
	mid[6] = mid[6]&0x0f | 0x40
	mid[8] = mid[8]&0x3f | 0x80
	id.MachineID = hex.EncodeToString(mid)
	if nic {
		id.MAC, err = NewMAC()
		if err != nil {
			return Identity{}, err
		}
	}
	id.UnixNanos = time.Now().UnixNano()
	return id, nil
}

// ForResume makes the identity of a sandbox resumed from its own saved
// state (pause to disk): fresh entropy and the host's clock, since the
// saved RNG state and clock are stale, and its hostname; it keeps its
// machine-id and MAC, being the same machine.
func ForResume(name string) (Identity, error) {
	id, err := New(name, false)
	if err != nil {
		return Identity{}, err
	}
	id.MachineID = ""
	return id, nil
}

// NewMAC returns a random locally administered unicast MAC.
func NewMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, MACBytes)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("guest identity: mac: %w", err)
	}
	mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered
	return mac, nil
}

// Hostname is the hostname of the sandbox called name: the name itself
// when it is a valid label (sandbox names are; a cold boot uses the same),
// otherwise the name lowercased with other characters replaced by '-'
// and cut to a label; an empty result becomes "mvm-" and 8 random hex
// digits, so that unnamed clones still differ.
func Hostname(name string) (string, error) {
	if ValidHostname(name) == nil {
		return name, nil
	}
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
		if b.Len() >= MaxHostnameBytes {
			break
		}
	}
	h := strings.Trim(b.String(), "-")
	if len(h) > MaxHostnameBytes {
		h = strings.Trim(h[:MaxHostnameBytes], "-")
	}
	if h == "" {
		r := make([]byte, 4)
		if _, err := rand.Read(r); err != nil {
			return "", fmt.Errorf("guest identity: hostname: %w", err)
		}
		h = "mvm-" + hex.EncodeToString(r)
	}
	return h, nil
}

// Validate checks every field; the agent calls it before changing
// anything, and the host before sending.
func (id Identity) Validate() error {
	if n := len(id.Entropy); n < MinEntropyBytes || n > MaxEntropyBytes {
		return fmt.Errorf("entropy: %d bytes, want %d to %d", n, MinEntropyBytes, MaxEntropyBytes)
	}
	if allSame(id.Entropy) {
		return fmt.Errorf("entropy: %d identical bytes is not randomness", len(id.Entropy))
	}
	if id.UnixNanos <= 0 {
		return fmt.Errorf("clock: %d is not a time after 1970", id.UnixNanos)
	}
	if err := ValidHostname(id.Hostname); err != nil {
		return err
	}
	if id.MachineID != "" {
		if err := ValidMachineID(id.MachineID); err != nil {
			return err
		}
	}
	if id.MAC != nil {
		if err := ValidMAC(id.MAC); err != nil {
			return err
		}
	}
	return nil
}

// ValidHostname checks a DNS label: 1..63 bytes of [a-z0-9-], not
// starting or ending with '-'.
func ValidHostname(h string) error {
	if h == "" || len(h) > MaxHostnameBytes {
		return fmt.Errorf("hostname: %d bytes, want 1 to %d", len(h), MaxHostnameBytes)
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("hostname %q: byte %d is not one of [a-z0-9-]", h, i)
		}
	}
	if h[0] == '-' || h[len(h)-1] == '-' {
		return fmt.Errorf("hostname %q: starts or ends with '-'", h)
	}
	return nil
}

// ValidMachineID checks /etc/machine-id's format: 32 lowercase hex
// digits, not all zero.
func ValidMachineID(m string) error {
	if len(m) != MachineIDHexDigits {
		return fmt.Errorf("machine-id: %d bytes, want %d hex digits", len(m), MachineIDHexDigits)
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("machine-id: byte %d is not a lowercase hex digit", i)
		}
	}
	if m == strings.Repeat("0", MachineIDHexDigits) {
		return fmt.Errorf("machine-id: all zero")
	}
	return nil
}

// ValidMAC checks a NIC address: 6 bytes, unicast, locally administered
// (so it never collides with a vendor's), not all zero in the rest.
func ValidMAC(mac net.HardwareAddr) error {
	if len(mac) != MACBytes {
		return fmt.Errorf("mac: %d bytes, want %d", len(mac), MACBytes)
	}
	if mac[0]&0x01 != 0 {
		return fmt.Errorf("mac %s: multicast", mac)
	}
	if mac[0]&0x02 == 0 {
		return fmt.Errorf("mac %s: not locally administered", mac)
	}
	if bytes.Equal(mac[1:], make([]byte, MACBytes-1)) {
		return fmt.Errorf("mac %s: no random part", mac)
	}
	return nil
}

func allSame(b []byte) bool {
	for _, c := range b[1:] {
		if c != b[0] {
			return false
		}
	}
	return true
}
