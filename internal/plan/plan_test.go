package plan

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/evidence"
)

func testInput() Input {
	return Input{
		SandboxID:    "sb-1",
		SandboxName:  "demo",
		ImageDigest:  "sha256:" + strings.Repeat("a", 64),
		KernelDigest: "sha256:" + strings.Repeat("b", 64),
		Resources:    Resources{CPUs: 2, MemoryMiB: 512, DiskMiB: 1024},
		EnvKeys:      []string{"B", "A"},
		Mounts:       []Mount{{HostPath: "/src", GuestPath: "/work", ReadOnly: true}},
	}
}

type env struct {
	data   string
	signer *evidence.Signer
	chain  *evidence.Chain
	ledger *Ledger
}

func newEnv(t *testing.T) *env {
	t.Helper()
	data := t.TempDir()
	s, err := evidence.LoadOrCreateSigner(filepath.Join(data, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	return &env{data: data, signer: s, chain: evidence.OpenChain(filepath.Join(data, "audit"), s), ledger: OpenLedger(LedgerPath(data))}
}

func (e *env) opts(now time.Time) AdmitOptions {
	return AdmitOptions{
		TrustedKey: e.signer.Public,
		Ledger:     e.ledger,
		StorePath:  filepath.Join(e.data, "sb", "sb-1", "plan.json"),
		Chain:      e.chain,
		Now:        func() time.Time { return now },
		LookupEnv:  func(string) (string, bool) { return "", false },
	}
}

func TestSynthesize(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	p, err := Synthesize(testInput(), now)
	if err != nil {
		t.Fatal(err)
	}
	if p.RunProfile != Standard || p.Network.Mode != NetNone || len(p.Nonce) != 64 ||
		p.ValidFrom != "2025-01-02T03:04:05.000Z" || p.ValidUntil != "2025-01-02T03:14:05.000Z" ||
		p.EnvKeys[0] != "A" || p.Sandbox.Name != "demo" {
		t.Fatalf("%+v", p)
	}
	q, _ := Synthesize(testInput(), now)
	if q.Nonce == p.Nonce || q.PlanID == p.PlanID {
		t.Fatal("nonce or id reused")
	}
	bad := testInput()
	bad.ImageDigest = "latest"
	if _, err := Synthesize(bad, now); !errors.Is(err, ErrMalformed) {
		t.Fatalf("bad digest: %v", err)
	}
}

func TestAdmitHappyPath(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	sp, err := Prepare(testInput(), e.signer, now)
	if err != nil {
		t.Fatal(err)
	}
	adm, err := Admit(context.Background(), sp, e.opts(now.Add(time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	stored, err := Load(e.opts(now).StorePath)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := stored.Hash()
	if h != adm.Hash {
		t.Fatal("stored plan hash differs")
	}
	st, _ := os.Stat(e.opts(now).StorePath)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("plan mode %04o", st.Mode().Perm())
	}
	if adm.Audit == nil || adm.Audit.Entry.Kind != evidence.KindPlanAdmitted || adm.Audit.Entry.Fields["plan_sha256"] != adm.Hash {
		t.Fatalf("audit %+v", adm.Audit)
	}
	if err := Verify(stored, e.signer.Public); err != nil {
		t.Fatal(err)
	}
}

func TestAdmitRefusals(t *testing.T) {
	now := time.Now()
	other := evidence.GenerateSigner("host:other")
	cases := []struct {
		name   string
		prep   func(e *env) (*SignedPlan, AdmitOptions)
		reason Reason
		is     error
	}{
		{"expired", func(e *env) (*SignedPlan, AdmitOptions) {
			sp, _ := Prepare(testInput(), e.signer, now)
			return sp, e.opts(now.Add(DefaultValidity))
		}, ReasonWindow, ErrOutsideWindow},
		{"not yet valid", func(e *env) (*SignedPlan, AdmitOptions) {
			sp, _ := Prepare(testInput(), e.signer, now)
			return sp, e.opts(now.Add(-time.Millisecond))
		}, ReasonWindow, ErrOutsideWindow},
		{"untrusted signer", func(e *env) (*SignedPlan, AdmitOptions) {
			sp, _ := Prepare(testInput(), other, now)
			return sp, e.opts(now)
		}, ReasonSignature, ErrUntrustedKey},
		{"tampered after signing", func(e *env) (*SignedPlan, AdmitOptions) {
			sp, _ := Prepare(testInput(), e.signer, now)
			sp.Payload.Resources.CPUs = 64
			return sp, e.opts(now)
		}, ReasonSignature, ErrBadSignature},
		{"tampered profile", func(e *env) (*SignedPlan, AdmitOptions) {
			sp, _ := Prepare(testInput(), e.signer, now)
			sp.Payload.RunProfile = Dev
			return sp, e.opts(now)
		}, ReasonSignature, ErrBadSignature},
		{"future schema", func(e *env) (*SignedPlan, AdmitOptions) {
			sp, _ := Prepare(testInput(), e.signer, now)
			sp.Payload.SchemaVersion = 99
			return sp, e.opts(now)
		}, ReasonSchema, ErrUnsupportedSchema},
		{"policy: rw mount under standard", func(e *env) (*SignedPlan, AdmitOptions) {
			in := testInput()
			in.Mounts[0].ReadOnly = false
			sp, _ := Prepare(in, e.signer, now)
			return sp, e.opts(now)
		}, ReasonPolicy, nil},
		{"policy: permissive without ack", func(e *env) (*SignedPlan, AdmitOptions) {
			in := testInput()
			in.RunProfile = Permissive
			sp, _ := Prepare(in, e.signer, now)
			return sp, e.opts(now)
		}, ReasonPolicy, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			sp, opts := tc.prep(e)
			_, err := Admit(context.Background(), sp, opts)
			var ae *AdmissionError
			if !errors.As(err, &ae) || ae.Reason != tc.reason {
				t.Fatalf("got %v, want reason %s", err, tc.reason)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("%v is not %v", err, tc.is)
			}
			if tc.reason == ReasonPolicy {
				var pd *PolicyDenied
				if !errors.As(err, &pd) {
					t.Fatalf("policy refusal without PolicyDenied: %v", err)
				}
			}
			if _, err := os.Stat(opts.StorePath); !os.IsNotExist(err) {
				t.Fatal("refused plan was stored")
			}
			recs, _, _ := evidence.ReadRecords(e.chain.Path(), 0)
			if len(recs) != 1 || recs[0].Entry.Kind != evidence.KindPlanRefused || recs[0].Entry.Fields["reason"] != string(tc.reason) {
				t.Fatalf("audit: %+v", recs)
			}
		})
	}
}

func TestAdmitPermissiveWithAck(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	in := testInput()
	in.RunProfile = Permissive
	in.Network = Network{Mode: NetUnrestricted}
	in.Mounts[0].ReadOnly = false
	in.Console = true
	sp, _ := Prepare(in, e.signer, now)
	opts := e.opts(now)
	opts.LookupEnv = func(k string) (string, bool) {
		if k == AckPermissiveEnv {
			return "1", true
		}
		return "", false
	}
	if _, err := Admit(context.Background(), sp, opts); err != nil {
		t.Fatal(err)
	}
}

func TestReplayRefused(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	sp, _ := Prepare(testInput(), e.signer, now)
	if _, err := Admit(context.Background(), sp, e.opts(now)); err != nil {
		t.Fatal(err)
	}
	_, err := Admit(context.Background(), sp, e.opts(now.Add(time.Second)))
	if !errors.Is(err, ErrReplay) {
		t.Fatalf("same ledger: %v", err)
	}
	if !strings.Contains(err.Error(), sp.Payload.Nonce) {
		t.Fatalf("replay error does not name the nonce: %v", err)
	}
	// A second Ledger instance on the same file (as another process would
	// open) sees the nonce too.
	opts := e.opts(now.Add(2 * time.Second))
	opts.Ledger = OpenLedger(LedgerPath(e.data))
	if _, err := Admit(context.Background(), sp, opts); !errors.Is(err, ErrReplay) {
		t.Fatalf("second ledger: %v", err)
	}
	// A fresh plan is fine.
	sp2, _ := Prepare(testInput(), e.signer, now)
	if _, err := Admit(context.Background(), sp2, opts); err != nil {
		t.Fatal(err)
	}
}

func TestLedgerPrunesExpired(t *testing.T) {
	l := OpenLedger(filepath.Join(t.TempDir(), "n.json"))
	t0 := time.Now()
	for i := 0; i < 50; i++ {
		if err := l.Consume("k", fmt.Sprintf("%064x", i), t0.Add(time.Minute), t0); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Consume("k", fmt.Sprintf("%064x", 1), t0.Add(time.Minute), t0); !errors.Is(err, ErrReplay) {
		t.Fatal("replay not caught")
	}
	// Later, the old entries are gone.
	if err := l.Consume("k", "new", t0.Add(3*time.Minute), t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(l.Path())
	var lf ledgerFile
	json.Unmarshal(b, &lf)
	if len(lf.Entries) != 1 {
		t.Fatalf("ledger not pruned: %d entries", len(lf.Entries))
	}
	// Same nonce from a different signer is a different key.
	if err := l.Consume("k2", "new", t0.Add(3*time.Minute), t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	// A corrupt ledger fails closed.
	os.WriteFile(l.Path(), []byte("{"), 0o600)
	if err := l.Consume("k", "x", t0.Add(3*time.Minute), t0); err == nil {
		t.Fatal("corrupt ledger accepted")
	}
}

const helperEnv = "MVM_PLAN_TEST_LEDGER"

// TestHelperLedger is the child side of TestReplayAcrossProcesses.
func TestHelperLedger(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		t.Skip("helper process only")
	}
	parts := strings.SplitN(spec, "|", 2)
	err := OpenLedger(parts[0]).Consume("k", parts[1], time.Now().Add(time.Minute), time.Now())
	if errors.Is(err, ErrReplay) {
		os.Exit(3)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestReplayAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nonces.json")
	nonce := strings.Repeat("ab", 32)
	const procs = 8
	results := make(chan int, procs)
	for i := 0; i < procs; i++ {
		go func() {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLedger$", "-test.count=1")
			cmd.Env = append(os.Environ(), helperEnv+"="+path+"|"+nonce)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			var ee *exec.ExitError
			switch {
			case err == nil:
				results <- 0
			case errors.As(err, &ee) && ee.ExitCode() == 3:
				results <- 3
			default:
				t.Errorf("helper: %v\n%s", err, out.String())
				results <- -1
			}
		}()
	}
	admitted, replays := 0, 0
	for i := 0; i < procs; i++ {
		switch <-results {
		case 0:
			admitted++
		case 3:
			replays++
		}
	}
	if admitted != 1 || replays != procs-1 {
		t.Fatalf("admitted %d, replays %d: the nonce must be admitted exactly once", admitted, replays)
	}
}

func TestStoredPlanParseStrict(t *testing.T) {
	e := newEnv(t)
	sp, _ := Prepare(testInput(), e.signer, time.Now())
	b, _ := sp.Canonical()
	if _, err := Parse(b); err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(append([]byte(" "), b...)); err == nil {
		t.Fatal("non-canonical plan accepted")
	}
	if _, err := Parse(bytes.Replace(b, []byte(`"console"`), []byte(`"x":1,"console"`), 1)); err == nil {
		t.Fatal("unknown field accepted")
	}
}

func TestAdmitRedaction(t *testing.T) {
	// Plans carry env key names, never values; admission evidence carries
	// counts and tags only.
	e := newEnv(t)
	now := time.Now()
	in := testInput()
	in.EnvKeys = []string{"OPENAI_API_KEY"}
	in.Mounts = []Mount{{HostPath: "/home/u/sk-SECRET-123", GuestPath: "/work", ReadOnly: true}}
	sp, _ := Prepare(in, e.signer, now)
	if _, err := Admit(context.Background(), sp, e.opts(now)); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(e.chain.Path())
	if bytes.Contains(b, []byte("SECRET")) || bytes.Contains(b, []byte("OPENAI")) {
		t.Fatalf("audit chain holds plan details: %s", b)
	}
}
