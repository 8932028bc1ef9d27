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
)

// BenchmarkHostMount boots one sandbox with a host directory (virtiofs,
// read-write) and a volume (ext4 on virtio-blk, the same kind of disk as a
// sandbox's own writable layer) and, in the same run, times in the guest:
//
//	write: 256 MiB with dd, fsync'd
//	read:  the same file with dd after dropping the guest's caches
//	list:  `ls -l` of 10,000 small files after dropping the caches
//
// on each side, and prints host-mount/disk ratios (throughput for read and
// write, time for list). Each step is one exec; its round trip (~0.1 s) is
// inside the times.
func BenchmarkHostMount(b *testing.B) {
	work := b.TempDir()
	share := filepath.Join(work, "share")
	os.MkdirAll(share, 0o755)
	env := append(os.Environ(), "MVM_STATE_DIR="+filepath.Join(work, "state"), "MVM_DATA_DIR="+filepath.Join(work, "data"))
	mvmctl := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "mvmctl"), args...)
		cmd.Env = env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			b.Fatalf("mvmctl %v: %v\n%s", args, err, out.String())
		}
		return out.String()
	}
	mvmctl("volume", "create", "benchvol", "--size", "1G")
	mvmctl("up", "--name", "bench", "--memory", "1G", "-v", share+":/mnt/host:rw", "--allow-rw-mount", "-v", "benchvol:/mnt/disk")
	defer mvmctl("down", "bench")
	sh := func(script string) time.Duration {
		t0 := time.Now()
		mvmctl("exec", "bench", "--", "sh", "-c", script)
		return time.Since(t0)
	}
	const mib = 256
	drop := "sync; echo 3 > /proc/sys/vm/drop_caches; "
	type result struct{ write, read, list time.Duration }
	measure := func(dir string) result {
		var r result
		r.write = sh(fmt.Sprintf("dd if=/dev/zero of=%s/big bs=1M count=%d conv=fsync 2>/dev/null", dir, mib))
		r.read = sh(drop + fmt.Sprintf("dd if=%s/big of=/dev/null bs=1M 2>/dev/null", dir))
		sh(fmt.Sprintf("mkdir %s/many && cd %s/many && i=0; while [ $i -lt 10000 ]; do echo x > f$i; i=$((i+1)); done", dir, dir))
		r.list = sh(drop + fmt.Sprintf("ls -l %s/many | wc -l", dir))
		return r
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		disk := measure("/mnt/disk")
		host := measure("/mnt/host")
		rate := func(d time.Duration) float64 { return float64(mib) * 1.048576 / d.Seconds() }
		fmt.Printf("%-6s %12s %12s %12s\n", "", "write MB/s", "read MB/s", "ls -l 10k")
		fmt.Printf("%-6s %12.1f %12.1f %11.2fs\n", "disk", rate(disk.write), rate(disk.read), disk.list.Seconds())
		fmt.Printf("%-6s %12.1f %12.1f %11.2fs\n", "host", rate(host.write), rate(host.read), host.list.Seconds())
		fmt.Printf("ratio host/disk: write %.2f  read %.2f  list time %.2f\n",
			rate(host.write)/rate(disk.write), rate(host.read)/rate(disk.read), host.list.Seconds()/disk.list.Seconds())
	}
}
