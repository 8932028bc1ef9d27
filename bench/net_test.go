package bench

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// netBytes is the size of the benchmark download.
const netBytes = 256 << 20

// BenchmarkNetEgress downloads 256 MiB over HTTP from a server on the
// host's loopback, in the same run: once from the host itself (the
// floor) and once from a sandbox through the egress path (guest TCP ->
// QEMU user networking -> guest forward -> supervisor proxy, which checks
// Host and resolves the name -> server). The guest reads with busybox nc
// and counts with wc. Reports both rates and their ratio.
func BenchmarkNetEgress(b *testing.B) {
	chunk := make([]byte, 1<<20)
	var served atomic.Int64 // complete responses
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(netBytes))
		for i := 0; i < netBytes/len(chunk); i++ {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
		served.Add(1)
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)

	work := b.TempDir()
	hosts := filepath.Join(work, "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 big.test\n"), 0o644)
	env := append(os.Environ(), "MVM_STATE_DIR="+filepath.Join(work, "s"), "MVM_DATA_DIR="+filepath.Join(work, "d"), "MVM_NET_HOSTS="+hosts)
	mvmctl := func(args ...string) (string, time.Duration) {
		cmd := exec.Command(filepath.Join(binDir, "mvmctl"), args...)
		cmd.Env = env
		t0 := time.Now()
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("mvmctl %v: %v\n%s", args, err, out)
		}
		return string(out), time.Since(t0)
	}
	mvmctl("up", "--name", "netbench", "--memory", "1G", "--allow", "big.test:"+port)
	defer mvmctl("down", "netbench")

	host := func() time.Duration {
		t0 := time.Now()
		resp, err := http.Get("http://127.0.0.1:" + port + "/")
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if n != netBytes {
			b.Fatalf("host read %d bytes", n)
		}
		return time.Since(t0)
	}
	_, execFloor := mvmctl("exec", "netbench", "--", "true")
	guest := func() time.Duration {
		// 10.0.2.101 is big.test, the only allowed name.
		// The guest writes to /dev/null: a pipe into wc costs more under
		// TCG than the network path itself. The server counts complete
		// responses instead.
		before := served.Load()
		_, d := mvmctl("exec", "netbench", "--", "sh", "-c",
			`printf 'GET / HTTP/1.0\r\nHost: big.test\r\n\r\n' | nc 10.0.2.101 `+port+` > /dev/null`)
		if served.Load() != before+1 {
			b.Fatal("the guest's download did not complete")
		}
		return d - execFloor
	}
	runs := min(runs(), 3)
	var hs, gs []time.Duration
	for i := 0; i < runs; i++ {
		hs = append(hs, host())
		gs = append(gs, guest())
	}
	h, g := median(hs), median(gs)
	mbps := func(d time.Duration) float64 { return float64(netBytes) / 1e6 / d.Seconds() }
	b.ReportMetric(mbps(h), "host-MB/s")
	b.ReportMetric(mbps(g), "egress-MB/s")
	b.ReportMetric(float64(g)/float64(h), "egress/host")
	fmt.Printf("net: 256 MiB download, median of %d: host %.0f MB/s (%v), sandbox egress %.1f MB/s (%v), egress/host time %.1fx\n",
		runs, mbps(h), h.Round(time.Millisecond), mbps(g), g.Round(time.Millisecond), float64(g)/float64(h))
}
