package guestid

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"
)

// TestNewIsFreshAndValid: two identities for the same name share only the
// hostname; every field passes Validate.
func TestNewIsFreshAndValid(t *testing.T) {
	before := time.Now().UnixNano()
	a, err := New("clone-a", true)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New("clone-a", true)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []Identity{a, b} {
		if err := id.Validate(); err != nil {
			t.Fatalf("New made an invalid identity: %v", err)
		}
		if id.UnixNanos < before || id.UnixNanos > time.Now().UnixNano() {
			t.Errorf("clock %d is not the host's", id.UnixNanos)
		}
		if len(id.Entropy) != EntropyBytes || id.Hostname != "clone-a" {
			t.Errorf("entropy %d bytes, hostname %q", len(id.Entropy), id.Hostname)
		}
		if id.MachineID[12] != '4' {
			t.Errorf("machine-id %s is not a v4 UUID", id.MachineID)
		}
	}
	if bytes.Equal(a.Entropy, b.Entropy) || a.MachineID == b.MachineID || bytes.Equal(a.MAC, b.MAC) {
		t.Errorf("two identities share entropy, machine-id or MAC: %+v %+v", a, b)
	}
	if c, _ := New("x", false); c.MAC != nil {
		t.Errorf("no NIC, but a MAC %s", c.MAC)
	}
}

func TestHostname(t *testing.T) {
	for in, want := range map[string]string{
		"web-1":                        "web-1",
		"Web_1":                        "web-1",
		"-x-":                          "x",
		strings.Repeat("a", 70):        strings.Repeat("a", 63),
		strings.Repeat("a", 62) + "-b": strings.Repeat("a", 62),
		"ünï":                          "n",
	} {
		got, err := Hostname(in)
		if err != nil || got != want {
			t.Errorf("Hostname(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	// Nothing usable: a random name, different each time.
	a, _ := Hostname("")
	b, _ := Hostname("---")
	if !strings.HasPrefix(a, "mvm-") || len(a) != 12 || a == b || ValidHostname(a) != nil {
		t.Errorf("fallback hostnames %q %q", a, b)
	}
}

func TestValidate(t *testing.T) {
	ok, _ := New("ok", true)
	if ValidMAC(net.HardwareAddr{0x02, 0, 0, 0, 0, 0}) == nil {
		t.Error("MAC without a random part accepted")
	}
	bad := map[string]func(*Identity){
		"entropy short": func(id *Identity) { id.Entropy = id.Entropy[:MinEntropyBytes-1] },
		"entropy long":  func(id *Identity) { id.Entropy = make([]byte, MaxEntropyBytes+1) },
		"entropy zero":  func(id *Identity) { id.Entropy = make([]byte, 64) },
		"clock":         func(id *Identity) { id.UnixNanos = 0 },
		"hostname":      func(id *Identity) { id.Hostname = "a b" },
		"hostname nul":  func(id *Identity) { id.Hostname = "a\x00" },
		"machine-id":    func(id *Identity) { id.MachineID = "g" + id.MachineID[1:] },
		"mac":           func(id *Identity) { id.MAC = net.HardwareAddr{1, 2, 3, 4, 5, 6} },
	}
	for name, mod := range bad {
		id := ok
		id.Entropy = append([]byte(nil), ok.Entropy...)
		mod(&id)
		if id.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestForResume: a resumed sandbox gets fresh entropy and the clock, keeps
// its machine-id and MAC (none sent), and is valid.
func TestForResume(t *testing.T) {
	id, err := ForResume("web-1")
	if err != nil || id.Validate() != nil {
		t.Fatalf("%+v %v", id, err)
	}
	if id.MachineID != "" || id.MAC != nil || id.Hostname != "web-1" || len(id.Entropy) != EntropyBytes || id.UnixNanos == 0 {
		t.Errorf("resume identity %+v", id)
	}
}
