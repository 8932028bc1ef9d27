package supervisor

import (
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// The supervisor boots only the host directories and volumes the plan
// admitted: a spec.json edited after admission (another directory, a
// read-only share made writable, an extra or swapped volume) is refused.
func TestCheckPlanMounts(t *testing.T) {
	p := &plan.Plan{
		Mounts:  []plan.Mount{{HostPath: "/srv/proj", GuestPath: "/work", ReadOnly: true}},
		Volumes: []plan.VolumeMount{{Name: "cache", GuestPath: "/cache"}},
	}
	good := backend.Spec{
		Shares: []backend.Share{{Tag: "mvmfs0", HostPath: "/srv/proj", ReadOnly: true}},
		Disks: []backend.Disk{{Path: "/c/rootfs.ext4", ReadOnly: true}, {Path: "/s/upper.ext4"},
			{Path: "/d/volumes/cache/disk.img", Serial: "mvmvol0"}},
	}
	if err := checkPlanMounts(good, p); err != nil {
		t.Fatal(err)
	}
	mutate := map[string]func(s *backend.Spec){
		"another directory":   func(s *backend.Spec) { s.Shares[0].HostPath = "/etc" },
		"share made writable": func(s *backend.Spec) { s.Shares[0].ReadOnly = false },
		"extra share":         func(s *backend.Spec) { s.Shares = append(s.Shares, backend.Share{Tag: "mvmfs1", HostPath: "/"}) },
		"no share":            func(s *backend.Spec) { s.Shares = nil },
		"another volume":      func(s *backend.Spec) { s.Disks[2].Path = "/d/volumes/other/disk.img" },
		"not a volume image":  func(s *backend.Spec) { s.Disks[2].Path = "/home/me/.ssh/id_rsa" },
		"volume made ro":      func(s *backend.Spec) { s.Disks[2].ReadOnly = true },
		"extra volume": func(s *backend.Spec) {
			s.Disks = append(s.Disks, backend.Disk{Path: "/d/volumes/x/disk.img", Serial: "mvmvol1"})
		},
	}
	for name, m := range mutate {
		s := good
		s.Shares = append([]backend.Share(nil), good.Shares...)
		s.Disks = append([]backend.Disk(nil), good.Disks...)
		m(&s)
		if err := checkPlanMounts(s, p); err == nil || !strings.Contains(err.Error(), "refusing to boot") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := checkPlanMounts(backend.Spec{Disks: good.Disks[:2]}, &plan.Plan{}); err != nil {
		t.Errorf("no mounts: %v", err)
	}
}

// A bundle sandbox's root directory is the plan's root_dir, its last
// share, read-write; a spec that moves, drops, narrows or smuggles it is
// refused.
func TestCheckPlanRootDir(t *testing.T) {
	p := &plan.Plan{Mounts: []plan.Mount{{HostPath: "/srv/proj", GuestPath: "/work", ReadOnly: true}},
		RootDir: &plan.RootDir{HostPath: "/run/c/rootfs"}}
	good := backend.Spec{Shares: []backend.Share{{Tag: "mvmfs0", HostPath: "/srv/proj", ReadOnly: true}, {Tag: sandbox.RootDirTag, HostPath: "/run/c/rootfs"}}}
	if err := checkPlanMounts(good, p); err != nil {
		t.Fatal(err)
	}
	only := backend.Spec{Shares: good.Shares[1:]}
	if err := checkPlanMounts(only, &plan.Plan{RootDir: p.RootDir}); err != nil {
		t.Fatalf("root directory alone: %v", err)
	}
	mutate := map[string]func(s *backend.Spec){
		"another root":        func(s *backend.Spec) { s.Shares[1].HostPath = "/etc" },
		"root not last":       func(s *backend.Spec) { s.Shares[0], s.Shares[1] = s.Shares[1], s.Shares[0] },
		"root dropped":        func(s *backend.Spec) { s.Shares = s.Shares[:1] },
		"root read-only flip": func(s *backend.Spec) { s.Shares[1].ReadOnly = true },
	}
	for name, m := range mutate {
		s := backend.Spec{Shares: append([]backend.Share(nil), good.Shares...)}
		m(&s)
		if err := checkPlanMounts(s, p); err == nil || !strings.Contains(err.Error(), "refusing to boot") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A root directory share the plan does not have.
	if err := checkPlanMounts(good, &plan.Plan{Mounts: p.Mounts}); err == nil {
		t.Error("a root directory share without root_dir in the plan was accepted")
	}
}
