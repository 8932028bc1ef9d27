package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// mvmEnv is one benchmark's private state and data directories (the cache,
// with its ready snapshots, is the shared one).
type mvmEnv struct {
	b    *testing.B
	work string
	env  []string
}

func newMvmEnv(b *testing.B) *mvmEnv {
	work := b.TempDir()
	e := &mvmEnv{b: b, work: work, env: append(os.Environ(),
		"MVM_STATE_DIR="+filepath.Join(work, "s"), "MVM_DATA_DIR="+filepath.Join(work, "d"))}
	b.Cleanup(func() {
		e.run("pool", "set", "minimal", "0")
		e.run("down", "--all")
	})
	return e
}

// run runs mvmctl and returns its stdout and how long it took.
func (e *mvmEnv) run(args ...string) (string, time.Duration, error) {
	cmd := exec.Command(filepath.Join(binDir, "mvmctl"), args...)
	cmd.Env = e.env
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	if err != nil {
		err = fmt.Errorf("mvmctl %v: %v\n%s%s", args, err, out.String(), errb.String())
	}
	return out.String(), d, err
}

func (e *mvmEnv) must(args ...string) (string, time.Duration) {
	e.b.Helper()
	out, d, err := e.run(args...)
	if err != nil {
		e.b.Fatal(err)
	}
	return out, d
}

// runStart runs `mvmctl run --json [flags] -- true` and returns its time
// and how it started ("restored" or "cold").
func (e *mvmEnv) runStart(flags ...string) (time.Duration, string) {
	e.b.Helper()
	out, d := e.must(append(append([]string{"run", "--json"}, flags...), "--", "true")...)
	var res struct {
		Start    string `json:"start"`
		ExitCode int    `json:"exit_code"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.ExitCode != 0 {
		e.b.Fatalf("run --json: %v: %s", err, out)
	}
	return d, res.Start
}

// BenchmarkWarmStart compares `mvmctl run -- true` restored from the
// image's ready snapshot with the same run booted cold (`--cold`),
// interleaved, medians. Target: warm/cold <= 0.25.
func BenchmarkWarmStart(b *testing.B) {
	e := newMvmEnv(b)
	// The first run records the ready snapshot (or finds it).
	e.runStart()
	e.runStart("--cold")
	var warm, cold []time.Duration
	for i := 0; i < runs(); i++ {
		d, start := e.runStart()
		if start != "restored" {
			b.Fatalf("a run with a ready snapshot started %q, want restored", start)
		}
		warm = append(warm, d)
		d, start = e.runStart("--cold")
		if start != "cold" {
			b.Fatalf("run --cold started %q", start)
		}
		cold = append(cold, d)
	}
	wm, cm := median(warm), median(cold)
	ratio := float64(wm) / float64(cm)
	b.ReportMetric(float64(wm.Milliseconds()), "warm-ms")
	b.ReportMetric(float64(cm.Milliseconds()), "cold-ms")
	b.ReportMetric(ratio, "ratio")
	fmt.Printf("warm start (%d runs each, medians): warm run -- true %v, cold run -- true %v, ratio %.2f (target <= %.2f)\n",
		runs(), wm.Round(time.Millisecond), cm.Round(time.Millisecond), ratio, warmRatioTarget)
	if ratio > warmRatioTarget {
		b.Errorf("warm/cold ratio %.2f misses its target of <= %.2f (SPECIFICATION.md)", ratio, warmRatioTarget)
	}
	if fi, err := os.Stat(readyRoot()); err == nil && fi.IsDir() {
		fmt.Printf("ready snapshots: %s\n", duSummary(readyRoot()))
	}
}

const warmRatioTarget = 0.25

// BenchmarkPoolClaim measures claim -> first exec on a warm pool: `mvmctl
// up` taking a pooled sandbox, then `mvmctl exec NAME -- true`, beside
// `mvmctl exec -- true` alone on a running sandbox in the same run (the
// floor: what any first command costs). The pool is refilled (and waited
// for) between samples. Target: claim -> first exec p50 <= 60 ms. Where a
// claim's time went comes from each claimed sandbox's boot report
// (boot.claim: admission, the supervisor's handover, the guest's identity
// refresh, which overlaps with the claimer's next steps).
func BenchmarkPoolClaim(b *testing.B) {
	e := newMvmEnv(b)
	const size = 2
	e.must("pool", "set", "minimal", fmt.Sprint(size))
	e.must("up", "--name", "floor", "--cold")
	var claims, ups, floors, admits, handovers, identities []time.Duration
	n := 2 * runs()
	for i := 0; i < n; i++ {
		waitPool(b, e, size)
		name := fmt.Sprintf("c%d", i)
		out, dUp := e.must("up", "--name", name, "--json")
		_, dExec := e.must("exec", name, "--", "true")
		var st struct {
			Boot struct {
				Pool  string `json:"pool"`
				Claim *struct {
					AdmitMS    float64 `json:"admit_ms"`
					HandoverMS float64 `json:"handover_ms"`
					IdentityMS float64 `json:"identity_ms"`
				} `json:"claim"`
			} `json:"boot"`
		}
		br, _ := e.must("boot-report", name, "--json")
		if json.Unmarshal([]byte(br), &st); st.Boot.Pool == "" || st.Boot.Claim == nil {
			b.Fatalf("%s was not taken from the pool: %s %s", name, out, br)
		}
		ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
		admits, handovers = append(admits, ms(st.Boot.Claim.AdmitMS)), append(handovers, ms(st.Boot.Claim.HandoverMS))
		identities = append(identities, ms(st.Boot.Claim.IdentityMS))
		claims, ups = append(claims, dUp+dExec), append(ups, dUp)
		_, dFloor := e.must("exec", "floor", "--", "true")
		floors = append(floors, dFloor)
		e.must("down", name)
	}
	c50, c95, u50, f50 := percentile(claims, 0.5), percentile(claims, 0.95), percentile(ups, 0.5), percentile(floors, 0.5)
	b.ReportMetric(float64(c50.Microseconds())/1000, "claim-exec-p50-ms")
	b.ReportMetric(float64(u50.Microseconds())/1000, "claim-p50-ms")
	b.ReportMetric(float64(f50.Microseconds())/1000, "exec-p50-ms")
	fmt.Printf("pool claim -> first exec (%d claims): p50 %v p95 %v (claim alone p50 %v); exec on a running sandbox p50 %v (ratio %.2f); target p50 <= %v\n",
		n, c50.Round(100*time.Microsecond), c95.Round(100*time.Microsecond), u50.Round(100*time.Microsecond),
		f50.Round(100*time.Microsecond), float64(c50)/float64(f50), poolClaimTarget)
	fmt.Printf("  claim breakdown p50 (boot.claim): admission %v, supervisor handover %v, guest identity refresh %v (overlapped; the first exec waits for it)\n",
		percentile(admits, 0.5).Round(100*time.Microsecond), percentile(handovers, 0.5).Round(100*time.Microsecond), percentile(identities, 0.5).Round(100*time.Microsecond))
	if c50 > poolClaimTarget {
		b.Errorf("claim -> first exec p50 %v misses its target of <= %v (SPECIFICATION.md)", c50, poolClaimTarget)
	}
}

const poolClaimTarget = 60 * time.Millisecond

// BenchmarkPoolRun measures the one-process path from a warm pool: `mvmctl
// run -- echo ok` takes a pooled member and runs the command in the same
// process, so claim -> first output costs one mvmctl start-up, not the two
// of `up` then `exec` (BenchmarkPoolClaim, whose row it does not replace).
// Timed from starting mvmctl to the first byte of the command's output on
// its stdout; the whole run (teardown of the transient sandbox included)
// is reported beside it, and `exec -- true` on a running sandbox in the
// same run is the floor. Every run must have claimed a member: the audit
// chain gains one sandbox.claimed entry per run.
func BenchmarkPoolRun(b *testing.B) {
	e := newMvmEnv(b)
	const size = 2
	e.must("pool", "set", "minimal", fmt.Sprint(size))
	e.must("up", "--name", "floor", "--cold")
	chain := filepath.Join(e.work, "d", "audit", "chain.jsonl")
	claimed := func() int {
		raw, _ := os.ReadFile(chain)
		return strings.Count(string(raw), `"kind":"sandbox.claimed"`)
	}
	var firsts, totals, floors []time.Duration
	n := 2 * runs()
	for i := 0; i < n; i++ {
		waitPool(b, e, size)
		before := claimed()
		cmd := exec.Command(filepath.Join(binDir, "mvmctl"), "run", "--", "echo", "ok")
		cmd.Env = e.env
		var errb strings.Builder
		cmd.Stderr = &errb
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 64)
		k, _ := out.Read(buf)
		first := time.Since(t0)
		rest, _ := io.ReadAll(out)
		if err := cmd.Wait(); err != nil || strings.TrimSpace(string(buf[:k])+string(rest)) != "ok" {
			b.Fatalf("mvmctl run -- echo ok: %v: %q %s", err, string(buf[:k])+string(rest), errb.String())
		}
		total := time.Since(t0)
		if got := claimed(); got != before+1 {
			b.Fatalf("run %d did not take a pooled sandbox (sandbox.claimed entries %d -> %d): %s", i, before, got, errb.String())
		}
		firsts, totals = append(firsts, first), append(totals, total)
		_, dFloor := e.must("exec", "floor", "--", "true")
		floors = append(floors, dFloor)
	}
	f50, f95, t50, fl50 := percentile(firsts, 0.5), percentile(firsts, 0.95), percentile(totals, 0.5), percentile(floors, 0.5)
	b.ReportMetric(float64(f50.Microseconds())/1000, "run-claim-first-output-p50-ms")
	b.ReportMetric(float64(fl50.Microseconds())/1000, "exec-p50-ms")
	fmt.Printf("pool claim -> first output, one process (`run -- echo ok`, %d claims): p50 %v p95 %v (whole run with teardown p50 %v); exec on a running sandbox p50 %v (ratio %.2f)\n",
		n, f50.Round(100*time.Microsecond), f95.Round(100*time.Microsecond), t50.Round(100*time.Microsecond),
		fl50.Round(100*time.Microsecond), float64(f50)/float64(fl50))
}

// waitPool waits until the pool of minimal has size ready members.
func waitPool(b *testing.B, e *mvmEnv, size int) {
	b.Helper()
	var out string
	refilled := func() bool {
		out, _ = e.must("pool", "ls", "--json")
		var rows []struct {
			Ready []string `json:"ready"`
		}
		json.Unmarshal([]byte(out), &rows)
		return len(rows) == 1 && len(rows[0].Ready) == size
	}
	if !testenv.Poll(5*time.Minute, 100*time.Millisecond, refilled) {
		b.Fatalf("the pool was not refilled: %s", out)
	}
}

func readyRoot() string {
	if c := os.Getenv("MVM_CACHE_DIR"); c != "" {
		return filepath.Join(c, "ready")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "mvm", "ready")
}

// duBytes is the space the files under dir take on disk.
func duBytes(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

func duSummary(dir string) string {
	return fmt.Sprintf("%.1f MiB on disk under %s", float64(duBytes(dir))/(1<<20), dir)
}

// BenchmarkPauseResume pauses a sandbox to disk and resumes it, for guests
// with 512 MiB and 1 GiB of touched memory (a file of that size in the
// guest's RAM-backed /tmp): pause, resume and resume -> first exec, and the
// bytes the paused sandbox takes on disk against its memory. The floor is
// the cold boot of the same guest (`up --cold`) in the same run.
func BenchmarkPauseResume(b *testing.B) {
	e := newMvmEnv(b)
	for _, c := range []struct {
		touchMiB int
		memory   string
	}{{512, "1536M"}, {1024, "2560M"}} { // the guest's /tmp holds at most half its memory
		name := fmt.Sprintf("p%d", c.touchMiB)
		_, boot := e.must("up", "--name", name, "--cold", "--memory", c.memory)
		e.must("exec", name, "--", "sh", "-c", fmt.Sprintf("yes 0123456789abcdef | head -c %d > /tmp/fill && sync", c.touchMiB<<20))
		var pauses, resumes, firsts []time.Duration
		var onDisk int64
		for i := 0; i < 3; i++ {
			_, dp := e.must("pause", name)
			dir := sandboxDir(e, name)
			if _, err := os.Stat(filepath.Join(dir, "suspended")); err != nil {
				b.Fatalf("pause did not go to disk (no %s/suspended): %v", dir, err)
			}
			onDisk = duBytes(filepath.Join(dir, "suspended"))
			_, dr := e.must("resume", name)
			_, dx := e.must("exec", name, "--", "true")
			pauses, resumes, firsts = append(pauses, dp), append(resumes, dr), append(firsts, dr+dx)
		}
		out, _ := e.must("exec", name, "--", "sh", "-c", "wc -c < /tmp/fill")
		if strings.TrimSpace(out) != fmt.Sprint(c.touchMiB<<20) {
			b.Fatalf("the guest's file after resume: %q", out)
		}
		p, r, f := median(pauses), median(resumes), median(firsts)
		b.ReportMetric(float64(p.Milliseconds()), fmt.Sprintf("pause-%dM-ms", c.touchMiB))
		b.ReportMetric(float64(f.Milliseconds()), fmt.Sprintf("resume-exec-%dM-ms", c.touchMiB))
		fmt.Printf("pause to disk, %d MiB touched (%s guest, 3 rounds, medians): pause %v, resume %v, resume -> first exec %v; cold boot of the same guest %v; %.0f MiB on disk (%.2fx the touched memory)\n",
			c.touchMiB, c.memory, p.Round(time.Millisecond), r.Round(time.Millisecond), f.Round(time.Millisecond),
			boot.Round(time.Millisecond), float64(onDisk)/(1<<20), float64(onDisk)/float64(c.touchMiB<<20))
		e.must("down", name)
	}
}

// sandboxDir is the state directory of sandbox name.
func sandboxDir(e *mvmEnv, name string) string {
	link, err := os.Readlink(filepath.Join(e.work, "s", "names", name))
	if err != nil {
		e.b.Fatal(err)
	}
	return filepath.Join(e.work, "s", "sb", filepath.Base(link))
}
