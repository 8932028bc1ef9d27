package bench

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/image/oci/ocitest"
	"github.com/mvm-sandbox/mvm/internal/image/rootfs"
	"github.com/mvm-sandbox/mvm/internal/paths"
)

// ociPayloadMiB is the random (incompressible) payload of the benchmark
// image, on top of busybox (MVM_BENCH_OCI_MIB overrides).
func ociPayloadMiB() int {
	n := 100
	if s := os.Getenv("MVM_BENCH_OCI_MIB"); s != "" {
		fmt.Sscan(s, &n)
	}
	return n
}

func randomBody(b *testing.B, n int) string {
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		b.Fatal(err)
	}
	return string(buf)
}

// BenchmarkOCIPull measures, in one run, against a registry in this
// process on 127.0.0.1 serving a ~100 MiB image (busybox plus four layers
// of random files):
//
//	floor: a crane-style pull of the image to an OCI layout directory with
//	       go-containerregistry (remote.Image + layout.AppendImage: every
//	       blob fetched, verified and written once)
//	pull:  image.Pull: the same fetch and verification, plus unpack, pack
//	       into ext4 and publish in the cache
//
// then, on real microVMs (hold /tmp/mvm-vm.lock), the first `mvmctl run
// --image REF -- true` of the pulled image vs the first run of a template
// image of the same size (`minimal` plus the same files, from mvmctl build).
func BenchmarkOCIPull(b *testing.B) {
	mib := ociPayloadMiB()
	const layers = 4
	reg := ocitest.NewRegistry(b, "", "")
	busy := ocitest.BusyboxEntries(b, rootfs.HostBusybox)
	ls := []v1.Layer{ocitest.Layer(ocitest.Tar(busy))}
	buildDir := b.TempDir()
	per := mib << 20 / layers
	for i := 0; i < layers; i++ {
		var es []ocitest.Entry
		es = append(es, ocitest.Entry{Name: fmt.Sprintf("data%d/", i), Type: tar.TypeDir})
		for j := 0; j < 8; j++ {
			body := randomBody(b, per/8)
			p := fmt.Sprintf("data%d/f%d", i, j)
			es = append(es, ocitest.Entry{Name: p, Body: body})
			if err := os.MkdirAll(filepath.Join(buildDir, "files", filepath.Dir(p)), 0o755); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(buildDir, "files", p), []byte(body), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		ls = append(ls, ocitest.Layer(ocitest.Tar(es)))
	}
	img := ocitest.Image(b, v1.Config{Cmd: []string{"/bin/sh"}}, "linux/amd64", ls...)
	reg.Push(b, "bench/oci:1", img, nil)
	ref := reg.Host + "/bench/oci:1"
	b.Setenv("DOCKER_CONFIG", b.TempDir())

	// floor: crane-style pull to a directory
	t0 := time.Now()
	r, err := name.ParseReference(ref)
	if err != nil {
		b.Fatal(err)
	}
	rimg, err := remote.Image(r, remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		b.Fatal(err)
	}
	p, err := layout.Write(filepath.Join(b.TempDir(), "layout"), empty.Index)
	if err != nil {
		b.Fatal(err)
	}
	if err := p.AppendImage(rimg); err != nil {
		b.Fatal(err)
	}
	floor := time.Since(t0)

	// mvm: pull + unpack + pack into a fresh cache
	work := b.TempDir()
	dirs := paths.Dirs{Cache: filepath.Join(work, "cache"), Data: filepath.Join(work, "data"), State: filepath.Join(work, "state")}
	t0 = time.Now()
	a, err := image.Pull(context.Background(), dirs, ref, image.PullOptions{}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	pull := time.Since(t0)
	b.ReportMetric(float64(floor.Milliseconds()), "floor-ms")
	b.ReportMetric(float64(pull.Milliseconds()), "pull-ms")
	fmt.Printf("OCI pull of %d MiB payload (%d layers + busybox): floor (crane-style pull to a layout dir) %v, mvm pull+unpack+pack %v, ratio %.2f; image %d MiB\n",
		mib, layers, floor.Round(time.Millisecond), pull.Round(time.Millisecond), float64(pull)/float64(floor), a.Size>>20)

	// first run: the pulled image vs a template image of the same size
	state := filepath.Join(work, "vmstate")
	env := append(os.Environ(), "MVM_STATE_DIR="+state, "MVM_DATA_DIR="+filepath.Join(work, "vmdata"))
	mvmctl := func(args ...string) (string, time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "mvmctl"), args...)
		cmd.Env = env
		t := time.Now()
		out, err := cmd.Output()
		d := time.Since(t)
		if err != nil {
			b.Fatalf("mvmctl %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out)), d
	}
	mvmctl("image", "pull", ref)
	if err := os.WriteFile(filepath.Join(buildDir, "mvm.toml"), []byte("template = \"minimal\"\n[files]\n\"/work\" = \"\"\n\"/opt/payload\" = \"files\"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	built, _ := mvmctl("build", buildDir)
	digest := strings.Fields(built)[0]
	// first runs alternate which image goes first (MVM_BENCH_OCI_RUNS
	// rounds, default 3; MVM_BENCH_OCI_TEMPLATE_FIRST=1 starts with the
	// template), so that an order effect shows instead of hiding in one
	// sample; the medians are compared
	rounds := 3
	if s := os.Getenv("MVM_BENCH_OCI_RUNS"); s != "" {
		fmt.Sscan(s, &rounds)
	}
	tplFirst := os.Getenv("MVM_BENCH_OCI_TEMPLATE_FIRST") == "1"
	var ociRuns, tplRuns, ociBoots, tplBoots []time.Duration
	// one run: the whole command, and its boot (up to the agent's hello)
	// as `run --json` reports it
	runOne := func(image string, total, boot *[]time.Duration) {
		out, d := mvmctl("run", "--json", "--image", image, "--", "true")
		var r struct {
			Timings struct {
				BootMS int64 `json:"boot_ms"`
			} `json:"timings"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			b.Fatalf("run --json: %v: %s", err, out)
		}
		*total = append(*total, d)
		*boot = append(*boot, time.Duration(r.Timings.BootMS)*time.Millisecond)
	}
	for i := 0; i < rounds; i++ {
		runOCI := func() { runOne(ref, &ociRuns, &ociBoots) }
		runTpl := func() { runOne(digest, &tplRuns, &tplBoots) }
		if (i%2 == 1) != tplFirst {
			runTpl()
			runOCI()
		} else {
			runOCI()
			runTpl()
		}
	}
	ociRun, tplRun := median(ociRuns), median(tplRuns)
	b.ReportMetric(float64(ociRun.Milliseconds()), "oci-run-ms")
	b.ReportMetric(float64(tplRun.Milliseconds()), "template-run-ms")
	fmt.Printf("run -- true, median of %d (alternating order): OCI image %v %v, template image of the same size %v %v, ratio %.2f\n",
		rounds, ociRun.Round(time.Millisecond), roundAll(ociRuns), tplRun.Round(time.Millisecond), roundAll(tplRuns), float64(ociRun)/float64(tplRun))
	fmt.Printf("  of which boot (run --json boot_ms): OCI image %v %v, template image %v %v\n",
		median(ociBoots), ociBoots, median(tplBoots), tplBoots)
	mvmctl("image", "rm", ref)
	mvmctl("image", "rm", digest)
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
