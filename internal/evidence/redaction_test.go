package evidence

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRedaction drives the evidence API the way a runtime would, with
// secrets in argv, env values and output, and checks no evidence file holds
// the secret in any common encoding.
func TestRedaction(t *testing.T) {
	const secret = "sk-SECRET-123"
	data := t.TempDir()
	s, err := LoadOrCreateSigner(filepath.Join(data, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	chain := OpenChain(filepath.Join(data, "audit"), s)

	argv := []string{"curl", "-H", "Authorization: Bearer " + secret, secret}
	env := map[string]string{"OPENAI_API_KEY": secret, "PATH": "/bin"}
	inv := RedactInvocation(argv, env)
	if _, err := chain.Append(KindExecStarted, "sb-1", inv.Fields()); err != nil {
		t.Fatal(err)
	}
	stdout := NewHasher()
	io.Copy(stdout, strings.NewReader("token="+secret+"\n"))
	stdin := NewHasher()
	io.WriteString(stdin, secret)
	now := time.Now()
	receipt, _, err := RecordRun(chain, s, RunRecord{Backend: "qemu",
		SandboxID: "sb-1", ImageDigest: strings.Repeat("1", 64), KernelDigest: strings.Repeat("2", 64),
		PlanHash: strings.Repeat("3", 64), Argv: argv, Env: env,
		Stdin: stdin.Digest(), Stdout: stdout.Digest(), Stderr: DigestBytes([]byte(secret)),
		StartedAt: now, FinishedAt: now,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := chain.Append(KindFileCopied, "sb-1", map[string]any{"content_sha256": SHA256Hex([]byte(secret)), "bytes": len(secret)}); err != nil {
		t.Fatal(err)
	}
	// The API refuses the obvious mistakes.
	for _, f := range []map[string]any{{"argv": argv[2]}, {"env": secret}, {"stdout": secret}, {"content": secret}} {
		if _, err := chain.Append(KindExecFinished, "sb-1", f); err == nil {
			t.Fatalf("fields %v accepted", f)
		}
	}
	rpath := filepath.Join(data, "receipt.json")
	if err := os.WriteFile(rpath, receipt, 0o644); err != nil {
		t.Fatal(err)
	}

	needles := [][]byte{
		[]byte(secret),
		[]byte(base64.StdEncoding.EncodeToString([]byte(secret))),
		[]byte(hex.EncodeToString([]byte(secret))),
		[]byte("SECRET"),
	}
	files := 0
	filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files++
		for _, n := range needles {
			if bytes.Contains(b, n) {
				t.Errorf("%s contains %q", p, n)
			}
		}
		return nil
	})
	if files < 4 {
		t.Fatalf("only %d evidence files scanned", files)
	}
}
