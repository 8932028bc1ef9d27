package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
)

// snapSpec is a machine whose disks exist: a read-only image in shared
// (the image cache) and the sandbox's own writable disk in dir.
func snapSpec(t *testing.T, shared, dir string) backend.Spec {
	t.Helper()
	ro := filepath.Join(shared, "root.ext4")
	if _, err := os.Stat(ro); err != nil {
		if err := os.WriteFile(ro, []byte("image"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rw := filepath.Join(dir, "upper.img")
	if err := os.WriteFile(rw, []byte("upper of "+filepath.Base(dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	return backend.Spec{
		Name: "mvm-snap", Kernel: "/k/vmlinux", CPUs: 1, MemoryMiB: 128, Dir: dir,
		Disks: []backend.Disk{{Path: ro, ReadOnly: true}, {Path: rw}},
	}
}

// bootedFake is an in-process fake API in dir that has booted spec.
func bootedFake(t *testing.T, spec backend.Spec) (*fakeAPI, *Machine) {
	t.Helper()
	f := &fakeAPI{dir: spec.Dir}
	srv := serveFakeAPI(t, filepath.Join(spec.Dir, APISocket), f)
	t.Cleanup(srv.Close)
	m := &Machine{dir: spec.Dir, api: newAPIClient(spec.Dir, APISocket)}
	for _, r := range BootRequests(spec) {
		if err := m.api.do(context.Background(), r.Method, r.Path, r.Body); err != nil {
			t.Fatal(err)
		}
	}
	return f, m
}

func TestSaveStateRequestsAndFiles(t *testing.T) {
	shared, dir, snap := shortDir(t), shortDir(t), shortDir(t)
	f, m := bootedFake(t, snapSpec(t, shared, dir))
	ctx := context.Background()
	state := filepath.Join(snap, "memory.state")

	// Firecracker snapshots only a paused microVM: the API error is
	// the error, with what was being done.
	_, err := m.SaveState(ctx, state)
	for _, want := range []string{"save state", "PUT /snapshot/create", "not paused", "HTTP 400"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("save of a running VM: %v (want %q)", err, want)
		}
	}
	for _, p := range []string{state, GuestMemoryPath(state)} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("a failed save left %s behind", p)
		}
	}

	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := m.SaveState(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	got := reqs[len(reqs)-1]
	want := recorded{"PUT", "/snapshot/create", map[string]any{
		"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": filepath.Join(snap, "guest.mem"),
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("create:\n got %#v\nwant %#v", got, want)
	}
	var total int64
	for _, p := range []string{state, GuestMemoryPath(state)} {
		fi, err := os.Stat(p)
		if err != nil || fi.Size() == 0 || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", p, fi, err)
		}
		total += fi.Size()
	}
	if n != total {
		t.Fatalf("SaveState returned %d, files hold %d", n, total)
	}
	// a second save into the same files is refused, not overwritten
	if _, err := m.SaveState(ctx, state); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("save over an existing state: %v", err)
	}
}

// TestRestoreCloneRequestSequence: a clone restores in its own directory:
// the load comes first on the fresh process, with the documented body;
// each drive is then pointed at the clone's file; the guest is resumed
// only by Resume, after the load.
func TestRestoreCloneRequestSequence(t *testing.T) {
	shared, src, snap, clone := shortDir(t), shortDir(t), shortDir(t), shortDir(t)
	_, m := bootedFake(t, snapSpec(t, shared, src))
	ctx := context.Background()
	state := filepath.Join(snap, "memory.state")
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SaveState(ctx, state); err != nil {
		t.Fatal(err)
	}
	// The source is gone: the clone must not need its paths.
	os.RemoveAll(src)

	spec := snapSpec(t, shared, clone)
	spec.Incoming = state
	f := &fakeAPI{dir: clone}
	srv := serveFakeAPI(t, filepath.Join(clone, APISocket), f)
	defer srv.Close()
	in := spec
	c := &Machine{dir: clone, api: newAPIClient(clone, APISocket), incoming: &in}
	if err := c.Resume(ctx); err == nil || !strings.Contains(err.Error(), "before starting") {
		t.Fatalf("resume before the load: %v", err)
	}
	f.mu.Lock()
	f.reqs = nil
	f.mu.Unlock()
	if err := c.CompleteIncoming(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	want := []recorded{
		{"PUT", "/snapshot/load", map[string]any{
			"snapshot_path": state,
			"mem_backend":   map[string]any{"backend_type": "File", "backend_path": filepath.Join(snap, "guest.mem")},
			"resume_vm":     false,
		}},
		{"PATCH", "/drives/disk0", map[string]any{"drive_id": "disk0", "path_on_host": filepath.Join(shared, "root.ext4")}},
		{"PATCH", "/drives/disk1", map[string]any{"drive_id": "disk1", "path_on_host": "upper.img"}},
		{"PATCH", "/vm", map[string]any{"state": "Resumed"}},
	}
	if got := f.requests(); !reflect.DeepEqual(got, want) {
		t.Fatalf("restore requests:\n got %#v\nwant %#v", got, want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.vsock != VsockSocket || f.phase != phaseRunning {
		t.Fatalf("restored vsock %q phase %v", f.vsock, f.phase)
	}
}

func TestCompleteIncomingNeedsAnIncomingMachine(t *testing.T) {
	m := &Machine{}
	if err := m.CompleteIncoming(context.Background()); err == nil || !strings.Contains(err.Error(), "not started from a saved state") {
		t.Fatalf("err %v", err)
	}
}

func TestStartIncomingNeedsBothFiles(t *testing.T) {
	t.Setenv("MVM_FIRECRACKER", "/nonexistent/firecracker-must-not-run")
	dir := shortDir(t)
	spec := snapSpec(t, dir, dir)
	spec.Incoming = filepath.Join(dir, "memory.state")
	os.WriteFile(spec.Incoming, []byte("state"), 0o600)
	_, err := Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "guest.mem") || !strings.Contains(err.Error(), "restore") {
		t.Fatalf("restore without guest memory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, VMMLog)); err == nil {
		t.Fatal("a VMM was started for an incomplete state")
	}
}

// fakeProcess makes Start run this test binary as Firecracker.
func fakeProcess(t *testing.T) {
	t.Setenv("MVM_FIRECRACKER", os.Args[0])
	t.Setenv("MVM_FAKE_FIRECRACKER", "1")
}

func hello(t *testing.T, ctx context.Context, m *Machine) {
	t.Helper()
	conn, err := m.DialChannel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if line, err := bufio.NewReader(conn).ReadString('\n'); line != "MVM-HELLO 1\n" {
		t.Fatalf("hello %q %v", line, err)
	}
}

// saveWithFakeProcess boots spec on a fake Firecracker process, saves it
// into snap and ends it.
func saveWithFakeProcess(t *testing.T, ctx context.Context, spec backend.Spec, snap string) string {
	t.Helper()
	m, err := Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	hello(t, ctx, m)
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(snap, "memory.state")
	if _, err := m.SaveState(ctx, state); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	return state
}

// TestSaveAndCloneWithFakeFirecracker: the whole path on a Firecracker
// process (the fake): boot, save, then two clones in their own
// directories, after the source is gone, each reaching its agent through
// its own vsock socket.
func TestSaveAndCloneWithFakeFirecracker(t *testing.T) {
	fakeProcess(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	shared, src, snap := shortDir(t), shortDir(t), shortDir(t)
	state := saveWithFakeProcess(t, ctx, snapSpec(t, shared, src), snap)
	os.RemoveAll(src)
	for i := 0; i < 2; i++ {
		dir := shortDir(t)
		spec := snapSpec(t, shared, dir)
		spec.Incoming = state
		m, err := Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.CompleteIncoming(ctx); err != nil {
			m.Kill()
			t.Fatal(err)
		}
		if err := m.Resume(ctx); err != nil {
			m.Kill()
			t.Fatal(err)
		}
		hello(t, ctx, m)
		if _, err := os.Stat(filepath.Join(dir, VsockSocket)); err != nil {
			t.Fatalf("clone %d: its vsock socket is not in its own directory: %v", i, err)
		}
		if err := m.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRestoreOfAnotherVersionFails: Firecracker refuses a state saved by
// another version; the fault reaches the caller with what was being done,
// and the process (which ends itself after a failed load) is gone.
func TestRestoreOfAnotherVersionFails(t *testing.T) {
	fakeProcess(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	shared, src, snap, dir := shortDir(t), shortDir(t), shortDir(t), shortDir(t)
	state := saveWithFakeProcess(t, ctx, snapSpec(t, shared, src), snap)
	var st fakeState
	b, _ := os.ReadFile(state)
	json.Unmarshal(b, &st)
	st.Version = "1.4.1"
	b, _ = json.Marshal(st)
	os.WriteFile(state, b, 0o600)

	spec := snapSpec(t, shared, dir)
	spec.Incoming = state
	m, err := Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	err = m.CompleteIncoming(ctx)
	for _, want := range []string{"restore", "PUT /snapshot/load", "Invalid snapshot version: 1.4.1", "HTTP 400"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("restore of another version: %v (want %q)", err, want)
		}
	}
	select {
	case <-m.Done():
	case <-ctx.Done():
		t.Fatal("firecracker still runs after a failed load")
	}
}

// TestFakeEnforcesTheDocumentedOrder: the fake refuses what Firecracker
// refuses in the wrong state, so the sequences above are a check.
func TestFakeEnforcesTheDocumentedOrder(t *testing.T) {
	dir := shortDir(t)
	os.WriteFile(filepath.Join(dir, "s"), []byte(`{"fake_firecracker_state":"1","version":"`+fakeVersion+`"}`), 0o600)
	os.WriteFile(filepath.Join(dir, "m"), []byte("memory"), 0o600)
	load := map[string]any{"snapshot_path": "s", "mem_backend": map[string]any{"backend_type": "File", "backend_path": "m"}, "resume_vm": false}
	type call struct {
		method, path string
		body         map[string]any
		want         string // "" when it must succeed
	}
	cases := map[string][]call{
		"load after boot configuration": {
			{"PUT", "/machine-config", map[string]any{"vcpu_count": 1, "mem_size_mib": 128}, ""},
			{"PUT", "/snapshot/load", load, "not allowed after configuring"},
		},
		"resume on a fresh process": {
			{"PATCH", "/vm", map[string]any{"state": "Resumed"}, "before starting"},
		},
		"drive update before a load": {
			{"PATCH", "/drives/disk0", map[string]any{"drive_id": "disk0", "path_on_host": "s"}, "before starting"},
		},
		"snapshot of a running VM": {
			{"PUT", "/snapshot/load", map[string]any{"snapshot_path": "s", "mem_file_path": "m", "resume_vm": true}, ""},
			{"PUT", "/snapshot/create", map[string]any{"snapshot_path": "s2", "mem_file_path": "m2"}, "not paused"},
		},
		"boot configuration after a load": {
			{"PUT", "/snapshot/load", load, ""},
			{"PUT", "/vsock", map[string]any{"guest_cid": 3, "uds_path": "v"}, "after starting"},
			{"PUT", "/actions", map[string]any{"action_type": "InstanceStart"}, "after starting"},
			{"PATCH", "/drives/disk9", map[string]any{"drive_id": "disk9", "path_on_host": "s"}, "not found"},
		},
		"start without a kernel": {
			{"PUT", "/actions", map[string]any{"action_type": "InstanceStart"}, "without kernel"},
		},
		"load with both memory sources": {
			{"PUT", "/snapshot/load", map[string]any{"snapshot_path": "s", "mem_file_path": "m", "mem_backend": map[string]any{"backend_type": "File", "backend_path": "m"}}, "exactly one"},
		},
		"bad shapes": {
			{"PUT", "/snapshot/load", map[string]any{"snapshot_path": "s", "mem_backend": map[string]any{"backend_type": "File"}}, "missing field `backend_path`"},
			{"PUT", "/snapshot/load", map[string]any{"snapshot_path": "s", "mem_backend": map[string]any{"backend_type": "Disk", "backend_path": "m"}}, "unknown variant `Disk`"},
			{"PUT", "/snapshot/load", map[string]any{"mem_file_path": "m"}, "missing field `snapshot_path`"},
			{"PUT", "/snapshot/load", map[string]any{"snapshot_path": "s", "mem_file_path": "m", "resume": true}, "unknown field `resume`"},
			{"PUT", "/snapshot/create", map[string]any{"snapshot_path": "s"}, "missing field `mem_file_path`"},
			{"PUT", "/snapshot/create", map[string]any{"snapshot_path": "s", "mem_file_path": "m", "snapshot_type": "Partial"}, "unknown variant"},
			{"PATCH", "/drives/disk0", map[string]any{"path_on_host": "s"}, "missing field `drive_id`"},
			{"PATCH", "/drives/disk0", map[string]any{"drive_id": "disk1"}, "does not match"},
		},
	}
	for name, calls := range cases {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			sock := shortDir(t)
			f := &fakeAPI{dir: dir}
			srv := serveFakeAPI(t, filepath.Join(sock, APISocket), f)
			defer srv.Close()
			c := newAPIClient(sock, APISocket)
			for _, k := range calls {
				err := c.do(context.Background(), k.method, k.path, k.body)
				if k.want == "" && err != nil {
					t.Fatalf("%s %s: %v", k.method, k.path, err)
				}
				if k.want != "" && (err == nil || !strings.Contains(err.Error(), k.want)) {
					t.Fatalf("%s %s %v: err %v, want %q", k.method, k.path, k.body, err, k.want)
				}
			}
		})
	}
}

// TestSaveResetsTheVsockConnections: as Firecracker documents, a save
// closes the vsock connections that were open (the fake resets them on
// PUT /snapshot/create) and the guest's listener stays, so the machine
// that was saved reports SaveResetsChannel and a new DialChannel after
// Resume reaches the agent again.
func TestSaveResetsTheVsockConnections(t *testing.T) {
	fakeProcess(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	shared, dir, snap := shortDir(t), shortDir(t), shortDir(t)
	m, err := Start(ctx, snapSpec(t, shared, dir))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	if !m.SaveResetsChannel() {
		t.Fatal("a firecracker machine does not report that a save resets its agent channel")
	}
	old, err := m.DialChannel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	r := bufio.NewReader(old)
	if line, err := r.ReadString('\n'); line != "MVM-HELLO 1\n" {
		t.Fatalf("hello %q %v", line, err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SaveState(ctx, filepath.Join(snap, "memory.state")); err != nil {
		t.Fatal(err)
	}
	old.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := r.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection open at the save still answers after it: %d bytes, %v", n, err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	hello(t, ctx, m)
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}
