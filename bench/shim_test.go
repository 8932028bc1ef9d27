package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
	"github.com/mvm-sandbox/mvm/internal/shim/ctrtest"
	"github.com/mvm-sandbox/mvm/internal/testbin"
)

// shimRatioTarget is the promise of SPECIFICATION.md: `ctr run --rm
// --runtime io.containerd.mvm.v2 IMG ID true` against `mvmctl run --cold --
// true`,
// medians of interleaved runs: the shim's overhead (containerd, the
// snapshot mount, the shim process, the virtiofs root) over mvm's own path.
const shimRatioTarget = 1.20

// BenchmarkShim compares a container run through containerd and the mvm
// shim with `mvmctl run --cold -- true`, in one run against one private
// containerd (the test image imported once).
func BenchmarkShim(b *testing.B) {
	if err := testbin.BuildShim(binDir); err != nil {
		b.Fatal(err)
	}
	work := b.TempDir()
	mvmEnv := []string{"MVM_STATE_DIR=" + filepath.Join(work, "state"), "MVM_DATA_DIR=" + filepath.Join(work, "data")}
	c := ctrtest.Start(b, binDir, mvmEnv)
	c.ImportImage(b)
	timed := func(what string, cmd *exec.Cmd) time.Duration {
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		t0 := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatalf("%s: %v\n%s", what, err, out.String())
		}
		return time.Since(t0)
	}
	var viaShim, viaMvm []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for r := 0; r < runs(); r++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			// --cold: a bundle sandbox (its root a host directory) always
			// boots, so the comparison is with a boot, not a restore.
			cmd := exec.CommandContext(ctx, filepath.Join(binDir, "mvmctl"), "run", "--cold", "--", "true")
			cmd.Env = append(os.Environ(), mvmEnv...)
			viaMvm = append(viaMvm, timed("mvmctl run --cold -- true", cmd))
			viaShim = append(viaShim, timed("ctr run true", c.CtrCommand(ctx, "run", "--rm", "--runtime", ctrtest.Runtime, ctrtest.Image, fmt.Sprintf("bench%d-%d", i, r), "true")))
			cancel()
		}
	}
	b.StopTimer()
	sm, mm := median(viaShim), median(viaMvm)
	ratio := float64(sm) / float64(mm)
	b.ReportMetric(float64(mm.Milliseconds()), "mvmctl-run-ms")
	b.ReportMetric(float64(sm.Milliseconds()), "ctr-run-ms")
	b.ReportMetric(ratio, "ratio")
	fmt.Printf("shim (%s, %d runs each, medians): mvmctl run --cold -- true %v, ctr run --rm --runtime %s true %v, ratio %.2f (target <= %.2f)\n",
		qemu.DetectAccel().Accel, len(viaMvm), mm.Round(time.Millisecond), ctrtest.Runtime, sm.Round(time.Millisecond), ratio, shimRatioTarget)
	if ratio > shimRatioTarget {
		b.Errorf("shim ratio %.2f misses its target of <= %.2f (SPECIFICATION.md)", ratio, shimRatioTarget)
	}
}
