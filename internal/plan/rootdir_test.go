package plan

import (
	"errors"
	"testing"
	"time"
)

// TestRootDir: a bundle sandbox's root directory is recorded in the plan,
// admitted under every run profile (restrictive included, which refuses
// -v host directories), and must be an absolute, clean path other than /.
func TestRootDir(t *testing.T) {
	now := time.Now().UTC()
	in := testInput()
	in.Mounts, in.EnvKeys = nil, nil
	in.RunProfile = Restrictive
	in.RootDir = &RootDir{HostPath: "/run/containerd/x/rootfs", BundleDir: "/run/containerd/x", ReadOnly: true}
	p, err := Synthesize(in, now)
	if err != nil {
		t.Fatal(err)
	}
	if p.RootDir == nil || p.RootDir.HostPath != "/run/containerd/x/rootfs" || !p.RootDir.ReadOnly {
		t.Fatalf("root_dir not recorded: %+v", p.RootDir)
	}
	if err := CheckPolicy(p, func(string) (string, bool) { return "", false }); err != nil {
		t.Fatalf("restrictive refused a root directory: %v", err)
	}
	for _, rd := range []RootDir{{HostPath: "/"}, {HostPath: "rel"}, {HostPath: "/a/../b"}, {HostPath: ""}, {HostPath: "/ok", BundleDir: "rel"}} {
		in.RootDir = &rd
		if _, err := Synthesize(in, now); !errors.Is(err, ErrMalformed) {
			t.Errorf("root_dir %+v: %v", rd, err)
		}
	}
}
