package cli

import (
	"bytes"
	"crypto/rand"
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/creack/pty"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/mvm-sandbox/mvm/internal/image/oci/ocitest"
	"github.com/mvm-sandbox/mvm/internal/image/rootfs"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// progressLine is one per-layer progress line of `image pull` on a
// terminal: "layer N/M sha256:... DONE / TOTAL".
var progressLine = regexp.MustCompile(`layer (\d+)/(\d+) sha256:[0-9a-f]{12}  ([0-9.]+ [KMG]?i?B) / ([0-9.]+ [KMG]?i?B)`)

// pullProgress splits what `image pull` wrote to stderr into per-layer
// progress lines: in place (ended by "\r" alone, overwritten by the next)
// or final (ended by a newline).
func pullProgress(out string) (inPlace, final []string) {
	for _, seg := range strings.Split(out, "\033[2K") {
		m := progressLine.FindString(seg)
		if m == "" {
			continue
		}
		rest := seg[strings.Index(seg, m)+len(m):]
		if strings.HasPrefix(rest, "\r\n") || strings.HasPrefix(rest, "\n") {
			final = append(final, m)
		} else if strings.HasPrefix(rest, "\r") {
			inPlace = append(inPlace, m)
		}
	}
	return inPlace, final
}

// TestImagePullTerminalProgress: on a terminal (a pty), `image pull`
// shows each layer's bytes as they arrive, updated in place, then a final
// line per layer with its total; on a pipe only the final lines.
func TestImagePullTerminalProgress(t *testing.T) {
	testenv.NeedTools(t, "mkfs.ext4")
	testenv.NeedStaticBinary(t, rootfs.HostBusybox, "busybox-static")
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	reg := ocitest.NewRegistry(t, "", "")
	big := make([]byte, 3<<20) // incompressible: about 3 MiB on the wire
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	img := ocitest.Image(t, v1.Config{Cmd: []string{"/bin/sh"}}, "linux/amd64",
		ocitest.Layer(ocitest.Tar(ocitest.BusyboxEntries(t, rootfs.HostBusybox))),
		ocitest.Layer(ocitest.Tar([]ocitest.Entry{{Name: "data", Body: string(big)}})))
	reg.Push(t, "tty/app:1", img, nil)
	ref := reg.Host + "/tty/app:1"

	master, slave, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	var got bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&got, master); close(done) }() // drained, or the pty fills and the pull blocks
	app, _, _ := testApp(t)
	app.Stderr = slave
	code := run(app, []string{"image", "pull", ref})
	slave.Close()
	<-done
	if code != 0 {
		t.Fatalf("pull on a terminal: exit %d:\n%q", code, got.String())
	}
	inPlace, final := pullProgress(got.String())
	if len(final) != 2 || !strings.HasPrefix(final[0], "layer 1/2") || !strings.HasPrefix(final[1], "layer 2/2") {
		t.Fatalf("final lines %q, want one per layer; output %q", final, got.String())
	}
	for _, f := range final {
		if m := progressLine.FindStringSubmatch(f); m[3] != m[4] {
			t.Errorf("final line %q: done is not the total", f)
		}
	}
	partial := 0
	for _, p := range inPlace {
		if m := progressLine.FindStringSubmatch(p); m[1] == "2" && m[3] != m[4] {
			partial++
		}
	}
	if partial < 2 {
		t.Fatalf("%d in-place updates of the 3 MiB layer before it was done (want at least 2, one per MiB): %q", partial, inPlace)
	}

	// not a terminal: the final lines only
	app, _, errb := testApp(t)
	if code := run(app, []string{"image", "pull", ref}); code != 0 {
		t.Fatalf("pull on a pipe: exit %d: %s", code, errb)
	}
	if inPlace, final := pullProgress(errb.String()); len(inPlace) != 0 || len(final) != 2 {
		t.Fatalf("on a pipe: %d in-place, %d final lines:\n%q", len(inPlace), len(final), errb.String())
	}
}
