package runtime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/plan"
)

func TestOCIResources(t *testing.T) {
	const mib = 1 << 20
	cases := []struct {
		name           string
		quota          int64
		period         uint64
		mem            int64
		wantCPU, wantM int
	}{
		{"nothing set", 0, 0, 0, 0, 0},
		{"unlimited quota", -1, 100000, -1, 0, 0},
		{"zero period", 50000, 0, 0, 0, 0},
		{"half a cpu rounds up", 50000, 100000, 0, 1, 0},
		{"exactly two", 200000, 100000, 0, 2, 0},
		{"just over two", 200001, 100000, 0, 3, 0},
		{"capped at 64", 1000 * 100000, 100000, 0, 64, 0},
		{"memory below the floor", 0, 0, 64 * mib, 0, MinBundleMemoryMiB},
		{"memory exact", 0, 0, 512 * mib, 0, 512},
		{"memory rounds up", 0, 0, 512*mib + 1, 0, 513},
		{"memory capped", 0, 0, 1 << 50, 0, 256 << 10},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cpus, m := OCIResources(c.quota, c.period, c.mem)
			if cpus != c.wantCPU || m != c.wantM {
				t.Fatalf("OCIResources(%d, %d, %d) = %d, %d; want %d, %d", c.quota, c.period, c.mem, cpus, m, c.wantCPU, c.wantM)
			}
		})
	}
}

func TestValidateLabels(t *testing.T) {
	ok := map[string]string{LabelContainerdNamespace: "k8s.io", LabelContainerdID: "abc-123_x"}
	if err := ValidateLabels(ok); err != nil {
		t.Fatal(err)
	}
	bad := []map[string]string{
		{"": "x"},
		{"a b": "x"},
		{"k": "line\nbreak"},
		{"k": "\x1b[31m"},
		{"k": strings.Repeat("v", maxLabelValueLen+1)},
		{strings.Repeat("k", maxLabelKeyLen+1): "v"},
	}
	many := map[string]string{}
	for i := 0; i <= maxLabels; i++ {
		many[strings.Repeat("k", i+1)] = "v"
	}
	bad = append(bad, many)
	for _, l := range bad {
		if err := ValidateLabels(l); err == nil {
			t.Errorf("ValidateLabels(%q) accepted", l)
		}
	}
}

func validSpec() ProcessSpec {
	return ProcessSpec{ID: "init", Args: []string{"/bin/sh", "-c", "true"}, Env: []string{"PATH=/bin", "EMPTY="}, Cwd: "/",
		UID: 1000, GID: 1000, AdditionalGids: []uint32{10}, Rlimits: []Rlimit{{Type: "RLIMIT_NOFILE", Soft: 100, Hard: 200}}}
}

func TestProcessSpecValidate(t *testing.T) {
	s := validSpec()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	umask := uint32(0o1777)
	cases := map[string]func(*ProcessSpec){
		"bad id":             func(p *ProcessSpec) { p.ID = "../x" },
		"empty id":           func(p *ProcessSpec) { p.ID = "" },
		"no args":            func(p *ProcessSpec) { p.Args = nil },
		"NUL arg":            func(p *ProcessSpec) { p.Args = []string{"a\x00b"} },
		"env without =":      func(p *ProcessSpec) { p.Env = []string{"NOEQUALS"} },
		"env empty key":      func(p *ProcessSpec) { p.Env = []string{"=v"} },
		"relative cwd":       func(p *ProcessSpec) { p.Cwd = "tmp" },
		"unknown rlimit":     func(p *ProcessSpec) { p.Rlimits = []Rlimit{{Type: "RLIMIT_BOGUS"}} },
		"soft above hard":    func(p *ProcessSpec) { p.Rlimits = []Rlimit{{Type: "RLIMIT_NOFILE", Soft: 2, Hard: 1}} },
		"duplicate rlimit":   func(p *ProcessSpec) { p.Rlimits = append(p.Rlimits, p.Rlimits[0]) },
		"umask out of range": func(p *ProcessSpec) { p.Umask = &umask },
		"too many groups":    func(p *ProcessSpec) { p.AdditionalGids = make([]uint32, maxSpecGroups+1) },
		"too many args":      func(p *ProcessSpec) { p.Args = make([]string, maxSpecArgs+1) },
		"unknown capability": func(p *ProcessSpec) { p.Capabilities = &Capabilities{Bounding: []string{"CAP_FLY"}} },
		"container not init": func(p *ProcessSpec) { p.Init, p.Container = false, &ContainerSpec{} },
		"too many mounts":    func(p *ProcessSpec) { p.Init, p.Container = true, &ContainerSpec{Mounts: make([]ContainerMount, 65)} },
	}
	for name, mut := range cases {
		t.Run(name, func(t *testing.T) {
			p := validSpec()
			mut(&p)
			err := p.Validate()
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Validate() = %v, want an invalid argument", err)
			}
		})
	}
}

func TestBundleProcessMapping(t *testing.T) {
	s := validSpec()
	u := uint32(0o022)
	s.Umask, s.NoNewPrivileges, s.Init = &u, true, true
	s.Capabilities = &Capabilities{Bounding: []string{"CAP_CHOWN", "CAP_KILL"}, Effective: []string{"CAP_KILL"}, Ambient: []string{"CAP_CHECKPOINT_RESTORE"}}
	bp, err := bundleProcess(s)
	if err != nil {
		t.Fatal(err)
	}
	if bp.Uid != 1000 || bp.Gid != 1000 || len(bp.AdditionalGids) != 1 || !bp.HasUmask || bp.Umask != 0o022 || !bp.NoNewPrivileges || !bp.Init {
		t.Fatalf("mapped %+v", bp)
	}
	if !bp.HasCapabilities || bp.CapBounding != 1|1<<5 || bp.CapEffective != 1<<5 || bp.CapPermitted != 0 || bp.CapAmbient != 1<<40 {
		t.Fatalf("capabilities %+v", bp)
	}
	if len(bp.Rlimits) != 1 || bp.Rlimits[0].Resource != 7 || bp.Rlimits[0].Soft != 100 || bp.Rlimits[0].Hard != 200 {
		t.Fatalf("rlimits %+v", bp.Rlimits)
	}
	if strings.Join(bp.Env, " ") != "PATH=/bin EMPTY=" {
		t.Fatalf("env %q", bp.Env)
	}
}

func TestBundleUpOptions(t *testing.T) {
	root := t.TempDir()
	r := &Runtime{Dirs: paths.Dirs{Data: filepath.Join(root, "data"), State: filepath.Join(root, "state"), Cache: filepath.Join(root, "cache")}}
	rootfs := filepath.Join(root, "bundle", "rootfs")
	os.MkdirAll(rootfs, 0o755)

	u, err := r.bundleUpOptions(BundleOptions{RootDir: rootfs, Labels: map[string]string{LabelContainerdID: "c1"}})
	if err != nil {
		t.Fatal(err)
	}
	if u.RunProfile != string(plan.Restrictive) || u.Network.HasNIC() || u.MemoryMiB != DefaultBundleMemoryMiB || u.RootDir.HostPath != rootfs || u.Image != "" {
		t.Fatalf("defaults: %+v", u)
	}
	u, err = r.bundleUpOptions(BundleOptions{RootDir: rootfs, Profile: "standard", Allow: []string{"example.com:443"}, MemoryMiB: 16})
	if err != nil {
		t.Fatal(err)
	}
	if u.Network.Mode != netpolicy.Allowlist || u.Network.Origin != netpolicy.OriginManifest || u.MemoryMiB != MinBundleMemoryMiB {
		t.Fatalf("allowlist: %+v", u)
	}
	for name, o := range map[string]BundleOptions{
		"no root":           {},
		"relative bundle":   {RootDir: rootfs, BundleDir: "bundle"},
		"bad label":         {RootDir: rootfs, Labels: map[string]string{"k": "\n"}},
		"host loopback ask": {RootDir: rootfs, Allow: []string{"host.mvm.internal:80"}},
		"bad hostname":      {RootDir: rootfs, Hostname: "a b"},
		"long hostname":     {RootDir: rootfs, Hostname: strings.Repeat("h", 64)},
	} {
		if _, err := r.bundleUpOptions(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Only the exact directory named is shared, and the host-directory
	// rules apply to it.
	for name, dir := range map[string]string{
		"missing":      filepath.Join(root, "nope"),
		"relative":     "bundle/rootfs",
		"mvm's own":    r.Dirs.State,
		"parent of it": root,
		"root":         "/",
	} {
		os.MkdirAll(r.Dirs.State, 0o700)
		if _, err := r.checkRootDir(&RootDir{HostPath: dir}); err == nil {
			t.Errorf("%s (%s): accepted", name, dir)
		}
	}
	link := filepath.Join(root, "link")
	os.Symlink(rootfs, link)
	if _, err := r.checkRootDir(&RootDir{HostPath: link}); err == nil {
		t.Error("a symlink to the root directory was accepted")
	}
	if p, err := r.checkRootDir(&RootDir{HostPath: rootfs}); err != nil || p != rootfs {
		t.Fatalf("checkRootDir = %q, %v", p, err)
	}
}
