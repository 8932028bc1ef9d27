package plan

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/evidence"
)

// TestPublishedPortsInPlan is issue 11 item 14: published ports are part
// of the signed plan and checked against the run profile.
func TestPublishedPortsInPlan(t *testing.T) {
	e := newEnv(t)
	now := time.Now().UTC()
	in := testInput()
	in.Mounts = nil
	in.Network = Network{Mode: NetNone, Publish: []Port{{HostAddr: "0.0.0.0", HostPort: 8080, GuestPort: 80}}}
	sp, err := Prepare(in, e.signer, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(sp.Payload.Network.Publish) != 1 || sp.Payload.Backend != BackendQEMU || sp.Payload.ImageProfile != ImageDev {
		t.Fatalf("plan %+v", sp.Payload)
	}
	// Standard binds only on loopback.
	_, err = Admit(context.Background(), sp, e.opts(now))
	var pd *PolicyDenied
	if !errors.As(err, &pd) || pd.Rule != RulePublishNonLoopback {
		t.Fatalf("0.0.0.0 under standard: %v", err)
	}
	// Editing the ports of a signed plan breaks its signature.
	in.Network.Publish[0].HostAddr = "127.0.0.1"
	sp, err = Prepare(in, e.signer, now)
	if err != nil {
		t.Fatal(err)
	}
	sp.Payload.Network.Publish = append(sp.Payload.Network.Publish, Port{HostAddr: "127.0.0.1", HostPort: 2222, GuestPort: 22})
	if _, err := Admit(context.Background(), sp, e.opts(now)); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("added port: %v", err)
	}
	sp.Payload.Network.Publish = sp.Payload.Network.Publish[:1]
	if _, err := Admit(context.Background(), sp, e.opts(now)); err != nil {
		t.Fatalf("loopback under standard: %v", err)
	}
	// Restrictive publishes nothing; dev binds anywhere.
	if err := Restrictive.CheckPublish(Port{HostAddr: "127.0.0.1", HostPort: 1, GuestPort: 1}); err == nil {
		t.Fatal("restrictive published a port")
	}
	if err := Dev.CheckPublish(Port{HostAddr: "0.0.0.0", HostPort: 1, GuestPort: 1}); err != nil {
		t.Fatal(err)
	}
	if err := Dev.CheckPublish(Port{HostAddr: "::1", HostPort: 1, GuestPort: 1}); err == nil {
		t.Fatal("IPv6 bind accepted")
	}
}

// TestPlanV1StillReadable: a plan stored by the previous schema parses,
// keeps its hash, and is never admitted.
func TestPlanV1StillReadable(t *testing.T) {
	e := newEnv(t)
	now := time.Now().UTC()
	v1 := map[string]any{
		"schema_version": 1, "plan_id": evidence.NewID(), "sandbox": map[string]any{"id": "sb-1", "name": "demo"},
		"image_digest": "sha256:" + strings.Repeat("a", 64), "kernel_digest": "sha256:" + strings.Repeat("b", 64),
		"resources": map[string]any{"cpus": 1, "memory_mib": 512, "disk_mib": 0}, "profile": "dev",
		"network": map[string]any{"mode": "none", "allow": []string{}}, "mounts": []any{}, "env_keys": []string{},
		"console": false, "valid_from": evidence.FormatTime(now), "valid_until": evidence.FormatTime(now.Add(time.Minute)),
		"nonce": strings.Repeat("ab", 32),
	}
	signed := map[string]any{"payload": v1, "public_key_sha256": e.signer.Fingerprint(), "signer_id": e.signer.ID,
		"signature": "AAAA"}
	b, err := evidence.Canonical(signed)
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/plan.json"
	os.WriteFile(path, append(b, '\n'), 0o600)
	sp, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if sp.Payload.RunProfile != Dev || sp.Payload.Backend != BackendQEMU {
		t.Fatalf("v1 plan read as %+v", sp.Payload)
	}
	h, _ := sp.Hash()
	if h != evidence.SHA256Hex(bytes.TrimSuffix(append(b, '\n'), []byte("\n"))) {
		t.Fatal("v1 plan hash is not the hash of its bytes")
	}
	if _, err := Admit(context.Background(), sp, e.opts(now)); !errors.Is(err, ErrUnsupportedSchema) {
		t.Fatalf("v1 plan admitted: %v", err)
	}
}
