package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/runtime"
)

// copyBytes is the size of each transfer (MVM_BENCH_COPY_MIB overrides).
func copyBytes() int64 {
	var mib int64 = 256
	if s := os.Getenv("MVM_BENCH_COPY_MIB"); s != "" {
		fmt.Sscan(s, &mib)
	}
	return mib << 20
}

// BenchmarkCopy boots one sandbox and, in the same run, measures:
//
//	raw in:   bytes through the supervisor to the agent, discarded (Discard RPC)
//	raw out:  bytes from the agent through the supervisor, discarded (Zeros RPC)
//	copy in:  `cp FILE NAME:/tmp/f` (tar stream, written to the guest's tmpfs)
//	copy out: `cp NAME:/tmp/f FILE` (tar stream, checked and written on the host)
//
// and prints copy/raw ratios. Target: copy >= 50% of raw (copyRatioTarget).
func BenchmarkCopy(b *testing.B) {
	n := copyBytes()
	work := b.TempDir()
	state := filepath.Join(work, "state")
	env := append(os.Environ(), "MVM_STATE_DIR="+state, "MVM_DATA_DIR="+filepath.Join(work, "data"))
	mvmctl := func(args ...string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "mvmctl"), args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("mvmctl %v: %v\n%s", args, err, out)
		}
	}
	mvmctl("up", "--name", "bench", "--memory", "1G")
	defer mvmctl("down", "bench")

	dirs := paths.FromEnv()
	dirs.State, dirs.Data = state, filepath.Join(work, "data")
	rt, err := runtime.New(dirs)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	src := filepath.Join(work, "src")
	f, _ := os.Create(src)
	io.CopyN(f, rand.Reader, n)
	f.Close()

	rate := func(d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }
	timeIt := func(name string, fn func() error) time.Duration {
		t0 := time.Now()
		if err := fn(); err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		d := time.Since(t0)
		fmt.Printf("%-9s %4d MiB in %6.2fs  %6.1f MB/s\n", name, n>>20, d.Seconds(), rate(d))
		return d
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, _, err := rt.Connect(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		rawIn := timeIt("raw in", func() error {
			got, err := c.Discard(ctx, n)
			if err == nil && got != n {
				err = fmt.Errorf("agent saw %d bytes", got)
			}
			return err
		})
		rawOut := timeIt("raw out", func() error {
			got, err := c.Zeros(ctx, n)
			if err == nil && got != n {
				err = fmt.Errorf("got %d bytes", got)
			}
			return err
		})
		c.Close()
		cpIn := timeIt("copy in", func() error { _, err := rt.CopyIn(ctx, "bench", src, "/tmp/f"); return err })
		dst := filepath.Join(work, "dst")
		os.Remove(dst)
		cpOut := timeIt("copy out", func() error { _, err := rt.CopyOut(ctx, "bench", "/tmp/f", dst, -1); return err })
		if err := rt.FsRemove(ctx, "bench", "/tmp/f", false); err != nil {
			b.Fatal(err)
		}
		inRatio := rawIn.Seconds() / cpIn.Seconds()
		outRatio := rawOut.Seconds() / cpOut.Seconds()
		fmt.Printf("ratio: copy in = %.0f%% of raw in, copy out = %.0f%% of raw out (target >= %.0f%%)\n", 100*inRatio, 100*outRatio, 100*copyRatioTarget)
		if inRatio < copyRatioTarget || outRatio < copyRatioTarget {
			b.Errorf("copy in %.0f%% / out %.0f%% of raw misses its target of >= %.0f%% (SPECIFICATION.md)", 100*inRatio, 100*outRatio, 100*copyRatioTarget)
		}
		b.ReportMetric(rate(cpIn), "copy-in-MB/s")
		b.ReportMetric(rate(cpOut), "copy-out-MB/s")
		b.ReportMetric(rate(rawIn), "raw-in-MB/s")
		b.ReportMetric(rate(rawOut), "raw-out-MB/s")
		b.ReportMetric(inRatio, "in-ratio")
		b.ReportMetric(outRatio, "out-ratio")
	}
}

// copyRatioTarget is the promise of SPECIFICATION.md: cp in and out each
// reach at least this share of the raw channel's rate in the same run.
const copyRatioTarget = 0.50
