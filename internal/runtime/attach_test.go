package runtime

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/secret"
	"github.com/mvm-sandbox/mvm/internal/volume"
)

func TestResolveAndVMAttachments(t *testing.T) {
	base := t.TempDir()
	r := &Runtime{Dirs: paths.Dirs{Data: filepath.Join(base, "data"), State: filepath.Join(base, "state"), Cache: filepath.Join(base, "cache")}}
	r.Layout = sandbox.Layout{Root: r.Dirs.State}
	share := filepath.Join(base, "share")
	os.MkdirAll(share, 0o755)
	if _, err := volume.Open(r.Dirs.Data).Create("cache", 16<<20, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := secret.Open(r.Dirs.Data).Set("tok", []byte("VALUE-123"), time.Now()); err != nil {
		t.Fatal(err)
	}
	o := UpOptions{
		Mounts:  []volume.MountSpec{{Source: share, Target: "/work", ReadOnly: true}, {Source: "cache", Target: "/cache", Volume: true}},
		Secrets: []secret.Ref{{Name: "tok", Env: "TOKEN"}},
	}
	a, err := r.ResolveAttachments(o)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Mounts) != 1 || a.Mounts[0] != (plan.Mount{HostPath: share, GuestPath: "/work", ReadOnly: true}) || len(a.Volumes) != 1 || len(a.Secrets) != 1 {
		t.Fatalf("%+v", a)
	}
	disks, shares, arg, err := r.vmAttachments(a)
	if err != nil || len(disks) != 1 || disks[0].Serial != "mvmvol0" || len(shares) != 1 || !shares[0].ReadOnly || !strings.HasSuffix(arg, " mvm.virtiofs=1") {
		t.Fatalf("%+v %+v %q %v", disks, shares, arg, err)
	}
	enc := strings.TrimPrefix(strings.Fields(arg)[0], "mvm.mounts=")
	b, _ := base64.RawURLEncoding.DecodeString(enc)
	var ms []map[string]any
	if json.Unmarshal(b, &ms) != nil || len(ms) != 2 || ms[0]["t"] != "/work" || ms[1]["s"] != "mvmvol0" {
		t.Fatalf("mounts arg %s", b)
	}
	// Names only in what the sandbox directory keeps.
	j, _ := json.Marshal(a)
	if strings.Contains(string(j), "VALUE-123") {
		t.Fatal("attachments hold a value")
	}

	for _, bad := range []UpOptions{
		{Mounts: []volume.MountSpec{{Source: filepath.Join(base, "missing"), Target: "/m"}}},
		{Mounts: []volume.MountSpec{{Source: r.Dirs.Data, Target: "/m"}}},
		{Mounts: []volume.MountSpec{{Source: "nope", Target: "/m", Volume: true}}},
		{Secrets: []secret.Ref{{Name: "nope", Env: "X"}}},
		{Secrets: []secret.Ref{{Name: "tok", Env: "X"}}, Env: map[string]string{"X": "1"}},
	} {
		if _, err := r.ResolveAttachments(bad); !errors.Is(err, ErrAttach) {
			t.Errorf("%+v: %v, want ErrAttach", bad, err)
		}
	}
	// A read-write volume is exclusive across sandboxes.
	l1, err := r.lockVolumes(a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.lockVolumes(a); !errors.Is(err, volume.ErrInUse) || !errors.Is(err, ErrAttach) {
		t.Fatalf("second lock: %v", err)
	}
	for _, f := range l1 {
		f.Close()
	}
}
