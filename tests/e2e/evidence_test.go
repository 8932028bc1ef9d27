package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

const secret = "sk-SECRET-9f8e7d6c"

// TestReceiptsAuditAndRedaction runs with secret-looking argv, env, stdin
// and stdout, checks the receipt and the chain verify, that tampering is
// caught, and that the secret appears nowhere in the evidence.
func TestReceiptsAuditAndRedaction(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	receipt := filepath.Join(t.TempDir(), "run.receipt.json")
	r := e.runIn(strings.NewReader(secret+"-stdin"), "run", "--receipt", receipt, "-e", "API_KEY="+secret,
		"--", "sh", "-c", "echo $API_KEY; cat; echo "+secret+"-argv >&2")
	if r.code != 0 || !strings.Contains(r.stdout, secret+"-stdin") {
		t.Fatalf("run: %s", r)
	}
	if v := e.run("receipt", "verify", receipt); v.code != 0 || !strings.Contains(v.stdout, "valid") {
		t.Fatalf("receipt verify: %s", v)
	}
	pub := filepath.Join(e.data, "keys", "host-signer.pub")
	if v := e.run("receipt", "verify", "--pubkey", pub, "--json", receipt); v.code != 0 {
		t.Fatalf("receipt verify --pubkey: %s", v)
	}
	// Any altered byte fails.
	orig, _ := os.ReadFile(receipt)
	for _, i := range []int{10, len(orig) / 2, len(orig) - 5} {
		bad := append([]byte(nil), orig...)
		bad[i] ^= 0x01
		p := filepath.Join(t.TempDir(), "bad.json")
		os.WriteFile(p, bad, 0o644)
		if v := e.run("receipt", "verify", p); v.code == 0 {
			t.Errorf("receipt with byte %d flipped verified", i)
		}
	}
	// A wrong key fails, naming the key check.
	other := filepath.Join(t.TempDir(), "other.pub")
	os.WriteFile(other, bytes.Repeat([]byte{7}, 32), 0o644)
	if v := e.run("receipt", "verify", "--pubkey", other, receipt); v.code == 0 || !strings.Contains(v.stdout+v.stderr, "key") {
		t.Errorf("wrong key accepted or check not named: %s", v)
	}
	if v := e.run("audit", "verify"); v.code != 0 {
		t.Fatalf("audit verify: %s", v)
	}
	tail := e.must("audit", "tail", "-n", "50", "--json")
	for _, kind := range []string{"plan.admitted", "sandbox.started", "exec.started", "exec.finished", "sandbox.stopped"} {
		if !strings.Contains(tail.stdout, `"`+kind+`"`) {
			t.Errorf("audit chain lacks %s", kind)
		}
	}
	// Redaction: no evidence file holds the secret, raw or encoded.
	needles := [][]byte{[]byte(secret), []byte(base64.StdEncoding.EncodeToString([]byte(secret))), []byte(fmt.Sprintf("%x", secret))}
	files := 0
	filepath.WalkDir(e.data, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		files++
		b, _ := os.ReadFile(p)
		for _, n := range needles {
			if bytes.Contains(b, n) {
				t.Errorf("evidence file %s holds the secret", p)
			}
		}
		return nil
	})
	if b, _ := os.ReadFile(receipt); bytes.Contains(b, []byte(secret)) {
		t.Errorf("receipt holds the secret")
	}
	if files < 3 {
		t.Errorf("expected key, chain and ledger files under the data dir, found %d", files)
	}
	// Tampering with the chain is caught at the right entry.
	chain := filepath.Join(e.data, "audit", "chain.jsonl")
	b, _ := os.ReadFile(chain)
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	lines[2] = bytes.Replace(lines[2], []byte(`"seq":3`), []byte(`"seq":33`), 1)
	os.WriteFile(chain, append(bytes.Join(lines, []byte("\n")), '\n'), 0o600)
	if v := e.run("audit", "verify", "--json"); v.code == 0 || !strings.Contains(v.stdout+v.stderr, "3") {
		t.Errorf("edited chain verified: %s", v)
	}
	e.assertClean()
}

func TestConcurrentRunsKeepChainValid(t *testing.T) {
	if testing.Short() {
		t.Skip("30 boots")
	}
	t.Parallel()
	e := newEnv(t)
	e.extra = append(e.extra, "MVM_BOOT_TIMEOUT=600s")
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for i := 0; i < 30; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r := e.run("run", "--memory", "192M", "--", "sh", "-c", fmt.Sprintf("exit %d", i%3))
			if r.code != i%3 {
				mu.Lock()
				failed++
				mu.Unlock()
				t.Errorf("run %d: %s", i, r)
			}
		}(i)
	}
	wg.Wait()
	v := e.run("audit", "verify", "--json")
	if v.code != 0 {
		t.Fatalf("audit verify after 30 concurrent runs: %s", v)
	}
	var rep map[string]any
	json.Unmarshal([]byte(v.stdout), &rep)
	// plan.admitted, sandbox.started, exec.started, exec.finished, sandbox.stopped per run.
	if n := countKind(t, e, "exec.finished"); n != 30-failed {
		t.Errorf("exec.finished entries: %d, want %d", n, 30-failed)
	}
	e.assertClean()
}

func countKind(t *testing.T, e *env, kind string) int {
	b, err := os.ReadFile(filepath.Join(e.data, "audit", "chain.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte(`"kind":"`+kind+`"`))
}

func TestProfilesDryRunAndKeyPermissions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// Dry run: an answer, and nothing on disk.
	r := e.run("run", "--dry-run", "--json", "-e", "TOKEN="+secret, "--", "python", "task.py")
	if r.code != 0 || strings.Contains(r.stdout, secret) || !strings.Contains(r.stdout, `"will_execute":false`) {
		t.Fatalf("dry run: %s", r)
	}
	for _, d := range []string{e.state, e.data} {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("dry run created %s", d)
		}
	}
	// restrictive refuses caller env; permissive needs the acknowledgement.
	if r := e.run("run", "--profile", "restrictive", "-e", "A=1", "--", "true"); r.code != 126 || !strings.Contains(r.stderr, "env") {
		t.Errorf("restrictive with env: %s", r)
	}
	if r := e.run("run", "--profile", "permissive", "--", "true"); r.code != 126 || !strings.Contains(r.stderr, "MVM_ACK_PERMISSIVE_RUN") {
		t.Errorf("permissive without ack: %s", r)
	}
	if r := e.run("run", "--profile", "restrictive", "--", "true"); r.code != 0 {
		t.Errorf("restrictive plain run: %s", r)
	}
	if v := e.must("audit", "tail", "-n", "20"); !strings.Contains(v.stdout, "plan.refused") {
		t.Errorf("refusals not audited: %s", v)
	}
	// A host key readable by others is refused with the fix.
	key := filepath.Join(e.data, "keys", "host-signer.ed25519")
	os.Chmod(key, 0o644)
	if r := e.run("run", "--", "true"); r.code == 0 || !strings.Contains(r.stderr, "chmod 600") {
		t.Errorf("loose key accepted: %s", r)
	}
	os.Chmod(key, 0o600)
	e.assertClean()
}
