// Package bench measures mvm against baselines taken in the same run.
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/
package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/testbin"
)

var binDir string

func TestMain(m *testing.M) { testbin.Main(m, &binDir) }

// runs is how many samples each side gets (MVM_BENCH_RUNS overrides).
func runs() int {
	if n, err := strconv.Atoi(os.Getenv("MVM_BENCH_RUNS")); err == nil && n > 0 {
		return n
	}
	return 7
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// floorInit is the trivial init of the baseline: load the same modules,
// write one byte to the agent port, power off.
const floorInit = `#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t sysfs sys /sys
for m in $(/bin/busybox cat /etc/mvm/modules); do /bin/busybox insmod "$m"; done
port=
while [ -z "$port" ] || [ ! -e "$port" ]; do
  for p in /sys/class/virtio-ports/*; do
    if [ "$(/bin/busybox cat $p/name 2>/dev/null)" = "mvm.agent" ]; then port=/dev/${p##*/}; fi
  done
  [ -n "$port" ] && [ -e "$port" ] || /bin/busybox usleep 1000
done
printf x > "$port"
/bin/busybox reboot -f
`

// floorBoot boots the same QEMU and kernel with the trivial init and
// returns the time until the VMM has exited after the byte arrived.
func floorBoot(b *testing.B, initrd string, k *image.Kernel) time.Duration {
	dir, err := os.MkdirTemp("", "floor")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	m, err := qemu.Start(ctx, backend.Spec{Name: "mvm-floor", Kernel: k.Vmlinux, Initrd: initrd, CPUs: 1, MemoryMiB: 512, Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Kill()
	conn, err := m.DialChannel(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	one := make([]byte, 1)
	if _, err := conn.Read(one); err != nil {
		console, _ := os.ReadFile(m.ConsolePath())
		b.Fatalf("floor: %v\n%s", err, console)
	}
	select {
	case <-m.Done():
	case <-ctx.Done():
		b.Fatal("floor VM did not power off")
	}
	return time.Since(t0)
}

// BenchmarkBoot compares `mvmctl run -- true` with the floor: the same
// QEMU and kernel booting a trivial init. Target ratio: <= 1.3.
func BenchmarkBoot(b *testing.B) {
	d := paths.FromEnv()
	k, err := image.FindKernel(d)
	if err != nil {
		b.Fatal(err)
	}
	bb, err := runtime.BusyboxPath()
	if err != nil {
		b.Fatal(err)
	}
	work := b.TempDir()
	script := filepath.Join(work, "init")
	if err := os.WriteFile(script, []byte(floorInit), 0o755); err != nil {
		b.Fatal(err)
	}
	initrd := filepath.Join(work, "floor.cpio")
	f, err := os.Create(initrd)
	if err != nil {
		b.Fatal(err)
	}
	if err := image.WriteInitramfs(image.InitramfsSpec{Agent: script, Busybox: bb, Kernel: k, Modules: []string{"virtio_mmio", "virtio_console"}}, f); err != nil {
		b.Fatal(err)
	}
	f.Close()

	state := filepath.Join(work, "state")
	mvmRun := func() time.Duration {
		// --cold: this is the boot against the floor; restores are
		// BenchmarkWarmStart's.
		cmd := exec.Command(filepath.Join(binDir, "mvmctl"), "run", "--cold", "--", "true")
		cmd.Env = append(os.Environ(), "MVM_STATE_DIR="+state, "MVM_DATA_DIR="+filepath.Join(work, "data"))
		t0 := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("mvmctl run: %v\n%s", err, out)
		}
		return time.Since(t0)
	}
	mvmRun() // warm the initramfs cache and the host page cache
	floorBoot(b, initrd, k)

	var floor, mvm []time.Duration
	for i := 0; i < runs(); i++ { // interleaved, so load drifts hit both
		floor = append(floor, floorBoot(b, initrd, k))
		mvm = append(mvm, mvmRun())
	}
	fm, mm := median(floor), median(mvm)
	ratio := float64(mm) / float64(fm)
	b.ReportMetric(float64(fm.Milliseconds()), "floor-ms")
	b.ReportMetric(float64(mm.Milliseconds()), "run-ms")
	b.ReportMetric(ratio, "ratio")
	fmt.Printf("boot (%s, %d runs each, medians): floor %v, mvmctl run -- true %v, ratio %.2f (target <= %.2f)\n",
		qemu.DetectAccel().Accel, runs(), fm.Round(time.Millisecond), mm.Round(time.Millisecond), ratio, bootRatioTarget)
	if ratio > bootRatioTarget {
		b.Errorf("boot ratio %.2f misses its target of <= %.2f (SPECIFICATION.md)", ratio, bootRatioTarget)
	}
}

// bootRatioTarget is the promise of SPECIFICATION.md: `mvmctl run -- true`
// against the floor boot, medians of interleaved runs.
const bootRatioTarget = 1.30
