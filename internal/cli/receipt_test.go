package cli

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/paths"
)

// runEvidenceCLI runs mvmctl ARGS against dirs and returns its exit code
// and output, mapping errors to codes as Main does.
func runEvidenceCLI(t *testing.T, dirs paths.Dirs, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	app := &App{Dirs: dirs, Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb}
	root := NewRoot(app)
	root.SetArgs(args)
	err := root.Execute()
	code := 0
	if err != nil {
		code = 1
		var ee *ExitError
		if errors.As(err, &ee) {
			code = ee.Code
		}
		errb.WriteString(err.Error())
	}
	return code, out.String(), errb.String()
}

// forgedReceipt is a well-formed receipt signed by a fresh key that claims
// to be the host "host:victim".
func forgedReceipt(t *testing.T, dir string) string {
	t.Helper()
	s := evidence.GenerateSigner("host:victim")
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b, _, err := evidence.BuildReceipt(evidence.RunRecord{Backend: "qemu",
		SandboxID: "sb-1", ImageDigest: "sha256:" + strings.Repeat("a", 64), KernelDigest: strings.Repeat("b", 64),
		PlanHash: strings.Repeat("c", 64), Argv: []string{"true"}, ExitCode: 0, StartedAt: t0, FinishedAt: t0,
	}, strings.Repeat("d", 64), s)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "forged.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestReceiptVerifyForgedReceiptRefused is issue 11 item 7: by default a
// receipt must be signed by the host's key; a forged one fails, no key at
// all fails with what to do, and --any-key says it checked integrity only.
func TestReceiptVerifyForgedReceiptRefused(t *testing.T) {
	base := t.TempDir()
	dirs := paths.Dirs{Data: filepath.Join(base, "data"), Cache: filepath.Join(base, "cache"), State: filepath.Join(base, "state")}
	forged := forgedReceipt(t, base)

	// No host key yet: nothing to trust, so nothing verifies.
	code, out, errs := runEvidenceCLI(t, dirs, "receipt", "verify", forged)
	if code != 1 || !strings.Contains(out, "no trusted key") || !strings.Contains(out, "--any-key") {
		t.Fatalf("no host key: exit %d\n%s%s", code, out, errs)
	}
	// With the host's key: the forged receipt names a signer but is not signed by it.
	if _, err := evidence.LoadOrCreateSigner(dirs.Keys()); err != nil {
		t.Fatal(err)
	}
	code, out, errs = runEvidenceCLI(t, dirs, "receipt", "verify", forged)
	if code != 1 || !strings.Contains(out, "which is not a trusted key") || strings.Contains(out, "valid:") {
		t.Fatalf("forged receipt: exit %d\n%s%s", code, out, errs)
	}
	code, out, _ = runEvidenceCLI(t, dirs, "receipt", "verify", "--json", forged)
	if code != 1 || !strings.Contains(out, `"failed": "trusted_key"`) {
		t.Fatalf("forged receipt --json: exit %d\n%s", code, out)
	}
	// The self-contained check passes and says what it did not check.
	code, out, errs = runEvidenceCLI(t, dirs, "receipt", "verify", "--any-key", forged)
	if code != 0 || !strings.Contains(out, "INTEGRITY ONLY") || !strings.Contains(out, "NOT checked") {
		t.Fatalf("--any-key: exit %d\n%s%s", code, out, errs)
	}
	// Trusting the forger's key explicitly (a key list file) makes it valid.
	rc, err := os.ReadFile(forged)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := evidence.VerifyReceipt(rc, evidence.AnyKey)
	if err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(base, "keys.txt")
	os.WriteFile(keys, []byte("# the other host\n"+rep.Payload.PublicKey+"\n"), 0o644)
	if code, out, errs := runEvidenceCLI(t, dirs, "receipt", "verify", "--key", keys, forged); code != 0 || !strings.Contains(out, "valid:") {
		t.Fatalf("--key: exit %d\n%s%s", code, out, errs)
	}
	// So does listing it in <keys>/trusted-keys.
	os.WriteFile(filepath.Join(dirs.Keys(), evidence.TrustedKeysFile), []byte(rep.Payload.PublicKey+"\n"), 0o644)
	if code, out, errs := runEvidenceCLI(t, dirs, "receipt", "verify", forged); code != 0 || !strings.Contains(out, "valid:") {
		t.Fatalf("trusted-keys: exit %d\n%s%s", code, out, errs)
	}
	if code, _, _ := runEvidenceCLI(t, dirs, "receipt", "verify", "--any-key", "--key", keys, forged); code != 2 {
		t.Fatalf("--any-key with --key: exit %d, want 2", code)
	}
}
