package runtime

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/sandbox/sandboxtest"
)

// fakeMember makes a sandbox directory that looks like a pool member in
// status (with alive, a stand-in for its supervisor runs).
func fakeMember(t *testing.T, r *Runtime, pool, status string, alive bool) string {
	t.Helper()
	id := sandbox.NewID()
	dir := r.Layout.Dir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := r.Layout.Reserve("pool-"+id, id); err != nil {
		t.Fatal(err)
	}
	sandbox.WriteJSON(filepath.Join(dir, poolMarker), poolMember{Pool: pool, Warm: true})
	pid := 0
	if alive {
		pid = sandboxtest.Supervisor(t, SupervisorCommand, dir)
	}
	sandbox.WriteJSON(filepath.Join(dir, sandbox.StateFile), sandbox.State{ID: id, Name: "pool-" + id, Status: status, SupervisorPID: pid, Created: time.Now()})
	return id
}

// Many claimers racing for the members of one pool: each member goes to
// exactly one of them.
func TestPoolClaimIsAtomic(t *testing.T) {
	r := testRuntime(t)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, fakeMember(t, r, "p1", sandbox.Running, true))
	}
	if m := r.poolMembers("p1"); len(m.ready) != 3 {
		t.Fatalf("members %+v", m)
	}
	var won atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, id := range ids {
				if r.takeMember(id, "claim") {
					won.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if won.Load() != 3 {
		t.Fatalf("%d claims succeeded for 3 members", won.Load())
	}
	if m := r.poolMembers("p1"); len(m.ready)+len(m.starting) != 0 {
		t.Fatalf("claimed members still listed: %+v", m)
	}
	// A claim given back (the caller's name was taken) is a member again.
	r.returnMember(ids[0], "claim")
	if m := r.poolMembers("p1"); len(m.ready) != 1 || m.ready[0] != ids[0] {
		t.Fatalf("returned member: %+v", m)
	}
}

func TestPoolMembersAndListing(t *testing.T) {
	r := testRuntime(t)
	ready := fakeMember(t, r, "p1", sandbox.Running, true)
	starting := fakeMember(t, r, "p1", sandbox.Starting, true)
	fakeMember(t, r, "p1", sandbox.Running, false) // its supervisor is dead
	// Its supervisor died with the host; its pid went to another
	// sandbox's supervisor after the reboot: not a member either.
	reused := fakeMember(t, r, "p1", sandbox.Running, false)
	st, _ := sandbox.ReadState(r.Layout.Dir(reused))
	st.SupervisorPID = sandboxtest.Supervisor(t, SupervisorCommand, r.Layout.Dir(sandbox.NewID()))
	sandbox.WriteJSON(filepath.Join(r.Layout.Dir(reused), sandbox.StateFile), st)
	cold := fakeMember(t, r, "p1", sandbox.Running, true)
	sandbox.WriteJSON(filepath.Join(r.Layout.Dir(cold), poolMarker), poolMember{Pool: "p1"}) // not warmed yet
	fakeMember(t, r, "p2", sandbox.Running, true)
	m := r.poolMembers("p1")
	if len(m.ready) != 1 || m.ready[0] != ready || len(m.starting) != 2 || m.starting[0] != starting || m.starting[1] != cold {
		t.Fatalf("members %+v", m)
	}
	// Listed as pooled, never as running: ls shows them only with -a,
	// and nothing can exec in one before it is claimed.
	st, err := r.Get(ready)
	if err != nil || st.Status != sandbox.Pooled {
		t.Fatalf("state %+v %v", st, err)
	}
	active, _ := r.List(false)
	for _, st := range active {
		if isPoolMember(r.Layout.Dir(st.ID)) {
			t.Fatalf("a pool member is listed without -a: %+v", st)
		}
	}
	all, _ := r.List(true)
	pooled := 0
	for _, st := range all {
		if st.Status == sandbox.Pooled {
			pooled++
		}
	}
	if pooled != 4 { // the dead ones are failed, not pooled
		t.Fatalf("%d pooled with -a, want 4", pooled)
	}
	if _, _, err := r.Connect(context.Background(), ready); err == nil {
		t.Fatal("connected to a pooled sandbox")
	}
	// Once claimed it is an ordinary running sandbox.
	r.takeMember(ready, "claim")
	if st, _ := r.Get(ready); st.Status != sandbox.Running {
		t.Fatalf("claimed member is %s", st.Status)
	}
}

func TestPoolableReason(t *testing.T) {
	cases := []struct {
		o    UpOptions
		att  *sandbox.Attachments
		want bool
	}{
		{UpOptions{}, nil, true},
		{UpOptions{TTL: time.Minute, Transient: true, Env: map[string]string{"A": "b"}}, &sandbox.Attachments{}, true},
		{UpOptions{Cold: true}, nil, false},
		{UpOptions{pool: &poolMember{}}, nil, false},
		{UpOptions{Workload: &WorkloadInfo{}}, nil, false},
		{UpOptions{Network: netpolicy.Config{Mode: netpolicy.Unrestricted}}, nil, false},
		{UpOptions{}, &sandbox.Attachments{Mounts: []plan.Mount{{}}}, false},
		{UpOptions{}, &sandbox.Attachments{Volumes: []plan.VolumeMount{{}}}, false},
	}
	for i, c := range cases {
		if got := poolableReason(&c.o, c.att) == ""; got != c.want {
			t.Errorf("case %d: poolable %v, want %v (%q)", i, got, c.want, poolableReason(&c.o, c.att))
		}
	}
}

func TestPoolShapeID(t *testing.T) {
	a := PoolShape{Backend: "qemu", ImageDigest: "sha256:a", RunProfile: "standard", CPUs: 1, MemoryMiB: 512}
	for _, mut := range []func(*PoolShape){
		func(s *PoolShape) { s.ImageDigest = "sha256:b" },
		func(s *PoolShape) { s.RunProfile = "dev" },
		func(s *PoolShape) { s.CPUs = 2 },
		func(s *PoolShape) { s.MemoryMiB = 1024 },
		func(s *PoolShape) { s.DiskMiB = 1024 },
	} {
		b := a
		mut(&b)
		if b.ID() == a.ID() {
			t.Errorf("%+v and %+v share a pool", a, b)
		}
	}
}

func TestSetPoolRefusesBadSizes(t *testing.T) {
	r := testRuntime(t)
	for _, n := range []int{-1, MaxPoolSize + 1} {
		if _, err := r.SetPool(context.Background(), PoolOptions{Size: n}); err == nil {
			t.Errorf("size %d accepted", n)
		}
	}
}
