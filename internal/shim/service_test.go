package shim

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/runtime"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

// fakeVMs runs processes that exit when signalled (with 128+sig) or when
// released through exit.
type fakeVMs struct {
	mu     sync.Mutex
	booted []BootRequest
	downs  []string
	procs  map[string]chan int
}

func newFake() *fakeVMs { return &fakeVMs{procs: map[string]chan int{}} }

func (f *fakeVMs) Boot(ctx context.Context, req BootRequest) (*VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.booted = append(f.booted, req)
	return &VM{ID: "vm1", Name: "run-vm1", VMMPID: 4242}, nil
}

func (f *fakeVMs) Start(ctx context.Context, vmID string, p ProcessRequest) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.procs[p.ID] = make(chan int, 1)
	return 100 + len(f.procs), nil
}

func (f *fakeVMs) ch(id string) chan int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.procs[id]
}

func (f *fakeVMs) Wait(ctx context.Context, vmID, procID string) (*Exit, error) {
	code := <-f.ch(procID)
	return &Exit{Code: code}, nil
}

func (f *fakeVMs) Signal(ctx context.Context, vmID, procID string, sig int, all bool) error {
	ids := []string{procID}
	if all {
		ids = nil
		f.mu.Lock()
		for id := range f.procs {
			ids = append(ids, id)
		}
		f.mu.Unlock()
	}
	for _, id := range ids {
		select {
		case f.ch(id) <- 128 + sig:
		default:
		}
	}
	return nil
}

func (f *fakeVMs) Resize(ctx context.Context, vmID, procID string, rows, cols uint32) error {
	return nil
}
func (f *fakeVMs) Forget(ctx context.Context, vmID, procID string) error { return nil }
func (f *fakeVMs) Pids(ctx context.Context, vmID string) ([]GuestProcess, error) {
	return []GuestProcess{{Pid: 101, ID: "init"}, {Pid: 102, ID: "e1"}}, nil
}
func (f *fakeVMs) Stats(ctx context.Context, vmID string) (*Stats, error) {
	return &Stats{MemTotalBytes: 200, MemAvailableBytes: 50, Processes: 3}, nil
}
func (f *fakeVMs) Pause(ctx context.Context, vmID string) error  { return nil }
func (f *fakeVMs) Resume(ctx context.Context, vmID string) error { return nil }
func (f *fakeVMs) Down(ctx context.Context, vmID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.downs = append(f.downs, vmID)
	return nil
}

func bundle(t *testing.T, spec specs.Spec) string {
	t.Helper()
	dir := t.TempDir()
	b, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "rootfs"), 0o755)
	return dir
}

func topics(s *Service) []string {
	var out []string
	for {
		select {
		case e := <-s.Events():
			out = append(out, e.Topic)
		default:
			return out
		}
	}
}

func TestServiceLifecycle(t *testing.T) {
	f := newFake()
	shut := make(chan struct{})
	s := NewService(context.Background(), f, "ns", func() { close(shut) })
	quota, period, mem := int64(150000), uint64(100000), int64(300<<20+1)
	dir := bundle(t, specs.Spec{
		Process:     &specs.Process{Args: []string{"sh"}},
		Hostname:    "box",
		Root:        &specs.Root{Path: "rootfs", Readonly: true},
		Annotations: map[string]string{AnnotationProfile: "standard", AnnotationAllow: "example.com:443, pypi.org"},
		Linux:       &specs.Linux{Resources: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}, Memory: &specs.LinuxMemory{Limit: &mem}}},
	})
	ctx := context.Background()
	cr, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: dir})
	if err != nil {
		t.Fatal(err)
	}
	if cr.Pid != 4242 {
		t.Errorf("create pid %d, want the VMM's", cr.Pid)
	}
	b := f.booted[0]
	if b.Resources != (Resources{CPUs: 2, MemoryMiB: 301}) || b.Policy.Profile != "standard" || strings.Join(b.Policy.Allow, ",") != "example.com:443,pypi.org" || b.Namespace != "ns" || b.ContainerID != "c1" ||
		b.Hostname != "box" || !b.ReadOnlyRoot || b.RootDir != filepath.Join(dir, "rootfs") {
		t.Errorf("boot request %+v", b)
	}
	if _, err := os.Stat(filepath.Join(dir, StateFile)); err != nil {
		t.Errorf("no bundle state for delete: %v", err)
	}
	if _, err := s.Start(ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	spec, _ := json.Marshal(specs.Process{Args: []string{"sleep", "1"}})
	if _, err := s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "e1", Spec: &anypb.Any{Value: spec}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(ctx, &taskAPI.StartRequest{ID: "c1", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	pids, err := s.Pids(ctx, &taskAPI.PidsRequest{ID: "c1"})
	if err != nil || len(pids.Processes) != 2 || pids.Processes[0].Info != nil || pids.Processes[1].Info == nil {
		t.Errorf("pids %v, %v", pids, err)
	}
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "c1"}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("delete of a running task: %v", err)
	}
	// Paused: reported, signals other than SIGKILL refused, resumed.
	if _, err := s.Pause(ctx, &taskAPI.PauseRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.State(ctx, &taskAPI.StateRequest{ID: "c1"}); st.Status != task.Status_PAUSED {
		t.Errorf("paused task is %v", st.Status)
	}
	if _, err := s.Kill(ctx, &taskAPI.KillRequest{ID: "c1", Signal: 15}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("SIGTERM to a paused task: %v", err)
	}
	if _, err := s.Resume(ctx, &taskAPI.ResumeRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.State(ctx, &taskAPI.StateRequest{ID: "c1"}); st.Status != task.Status_RUNNING {
		t.Errorf("resumed task is %v", st.Status)
	}
	// The task's exit waits for its execs, and reports the code.
	f.ch("init") <- 7
	f.Signal(ctx, "vm1", "e1", int(syscall.SIGKILL), false)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	w, err := s.Wait(wctx, &taskAPI.WaitRequest{ID: "c1"})
	if err != nil || w.ExitStatus != 7 {
		t.Fatalf("wait: %v %v", w, err)
	}
	ew, err := s.Wait(wctx, &taskAPI.WaitRequest{ID: "c1", ExecID: "e1"})
	if err != nil || ew.ExitStatus != 137 {
		t.Fatalf("exec wait: %v %v", ew, err)
	}
	if _, err := s.Kill(ctx, &taskAPI.KillRequest{ID: "c1", Signal: 15}); !errdefs.IsNotFound(err) {
		t.Errorf("kill after exit: %v, want not found", err)
	}
	st, _ := s.State(ctx, &taskAPI.StateRequest{ID: "c1"})
	if st.Status != task.Status_STOPPED || st.ExitStatus != 7 || st.Pid != 4242 {
		t.Errorf("state %v", st)
	}
	d, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "c1"})
	if err != nil || d.ExitStatus != 7 {
		t.Fatalf("delete: %v %v", d, err)
	}
	if len(f.downs) != 1 {
		t.Errorf("VM taken down %d times", len(f.downs))
	}
	if _, err := os.Stat(filepath.Join(dir, StateFile)); !os.IsNotExist(err) {
		t.Errorf("bundle state left: %v", err)
	}
	s.Shutdown(ctx, &taskAPI.ShutdownRequest{})
	select {
	case <-shut:
	default:
		t.Error("shutdown after delete did not end the shim")
	}
	got := strings.Join(topics(s), " ")
	// The exec's exit comes before the task's (the task waits for it).
	want := strings.Join([]string{runtime.TaskCreateEventTopic, runtime.TaskStartEventTopic, runtime.TaskExecAddedEventTopic,
		runtime.TaskExecStartedEventTopic, runtime.TaskPausedEventTopic, runtime.TaskResumedEventTopic, runtime.TaskExitEventTopic, runtime.TaskExitEventTopic, runtime.TaskDeleteEventTopic}, " ")
	if got != want {
		t.Errorf("events\n got %s\nwant %s", got, want)
	}
}

func TestServiceRefusals(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	s := NewService(ctx, f, "ns", func() {})
	// A terminal under the default (restrictive) profile: refused before boot.
	dir := bundle(t, specs.Spec{Process: &specs.Process{Args: []string{"sh"}}})
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "t", Bundle: dir, Terminal: true}); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "io.mvm.profile=dev") {
		t.Errorf("terminal under restrictive: %v", err)
	}
	bad := bundle(t, specs.Spec{Process: &specs.Process{Args: []string{"sh"}}, Annotations: map[string]string{AnnotationProfile: "root"}})
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "t", Bundle: bad}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("unknown profile: %v", err)
	}
	noargs := bundle(t, specs.Spec{Process: &specs.Process{}})
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "t", Bundle: noargs}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("no args: %v", err)
	}
	if len(f.booted) != 0 {
		t.Errorf("refused creates booted %d VMs", len(f.booted))
	}
	for _, d := range []string{dir, bad, noargs} {
		if _, err := os.Stat(filepath.Join(d, StateFile)); !os.IsNotExist(err) {
			t.Errorf("refused create left %s", StateFile)
		}
	}
	// Killing a created task ends it without running it.
	ok := bundle(t, specs.Spec{Process: &specs.Process{Args: []string{"sh"}}})
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "k", Bundle: ok}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Kill(ctx, &taskAPI.KillRequest{ID: "k", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	w, err := s.Wait(ctx, &taskAPI.WaitRequest{ID: "k"})
	if err != nil || w.ExitStatus != 137 {
		t.Errorf("wait after killing a created task: %v %v", w, err)
	}
	spec, _ := json.Marshal(specs.Process{Args: []string{"nope"}})
	// The task has exited: no more execs.
	if _, err := s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "k", ExecID: "y", Spec: &anypb.Any{Value: spec}}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("exec into an exited task: %v", err)
	}
	for _, m := range []func() error{
		func() error { _, err := s.Update(ctx, &taskAPI.UpdateTaskRequest{ID: "k"}); return err },
		func() error { _, err := s.Checkpoint(ctx, &taskAPI.CheckpointTaskRequest{ID: "k"}); return err },
	} {
		if err := m(); !errdefs.IsNotImplemented(err) {
			t.Errorf("want not implemented, got %v", err)
		}
	}
}

func TestMapResources(t *testing.T) {
	q := func(v int64) *int64 { return &v }
	p := func(v uint64) *uint64 { return &v }
	for _, c := range []struct {
		quota  *int64
		period *uint64
		mem    *int64
		want   Resources
	}{
		{nil, nil, nil, Resources{}},
		{q(100000), nil, nil, Resources{CPUs: 1}},
		{q(100001), p(100000), nil, Resources{CPUs: 2}},
		{q(50000), p(100000), q(64 << 20), Resources{CPUs: 1, MemoryMiB: 128}},
		{q(-1), nil, q(1 << 30), Resources{MemoryMiB: 1024}},
	} {
		s := &specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{
			CPU: &specs.LinuxCPU{Quota: c.quota, Period: c.period}, Memory: &specs.LinuxMemory{Limit: c.mem}}}}
		if got := MapResources(s); got != c.want {
			t.Errorf("quota %v period %v mem %v: %+v, want %+v", c.quota, c.period, c.mem, got, c.want)
		}
	}
}

func TestExitStatus(t *testing.T) {
	for _, c := range []struct {
		e    Exit
		want uint32
	}{{Exit{Code: 0}, 0}, {Exit{Code: 3}, 3}, {Exit{Code: 137, Signal: 9}, 137}, {Exit{Signal: 15}, 143}} {
		if got := c.e.Status(); got != c.want {
			t.Errorf("%+v: %d, want %d", c.e, got, c.want)
		}
	}
}

func TestBundleCaps(t *testing.T) {
	dir := t.TempDir()
	big := `{"process":{"args":["sh"]},"annotations":{"x":"` + strings.Repeat("a", maxConfigBytes) + `"}}`
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(big), 0o600)
	if _, err := readSpec(dir); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized config.json: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"process":`), 0o600)
	if _, err := readSpec(dir); !errdefs.IsInvalidArgument(err) {
		t.Errorf("malformed config.json: %v", err)
	}
	many := strings.Repeat("a.example,", maxAllow+1)
	if _, err := MapPolicy(map[string]string{AnnotationAllow: many}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("%d allowlist entries: %v", maxAllow+1, err)
	}
	if p, err := MapPolicy(nil); err != nil || p.Profile != "restrictive" || p.Allow != nil {
		t.Errorf("no annotations: %+v %v", p, err)
	}
	if _, err := MapPolicy(map[string]string{AnnotationProfile: ""}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("empty profile annotation: %v", err)
	}
}

// TestContainerSpec: a CRI-shaped spec maps to what the guest applies;
// host bind mounts, cgroup mounts and the network namespace are left out
// and said so; the pod's /dev/shm bind becomes a tmpfs of the guest.
func TestContainerSpec(t *testing.T) {
	s := &specs.Spec{
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue"},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro"}},
			{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/containerd/hosts", Options: []string{"rbind", "ro"}},
			{Destination: "/etc/resolv.conf", Source: "/run/resolv.conf", Options: []string{"bind"}},
			{Destination: "/dev/shm", Type: "bind", Source: "/run/containerd/shm", Options: []string{"rbind"}},
			{Destination: "/data", Type: "nfs", Source: "server:/x"},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace, Path: "/proc/42/ns/ipc"},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.CgroupNamespace}},
			MaskedPaths: []string{"/proc/kcore"}, ReadonlyPaths: []string{"/proc/sys"},
		},
	}
	c, skipped := ContainerSpec(s)
	if strings.Join(c.Namespaces, ",") != "pid,ipc,uts" || len(c.MaskedPaths) != 1 || len(c.ReadonlyPaths) != 1 {
		t.Fatalf("container: %+v", c)
	}
	var dests []string
	for _, m := range c.Mounts {
		dests = append(dests, m.Destination+":"+m.Type)
	}
	if strings.Join(dests, " ") != "/proc:proc /dev/mqueue:mqueue /dev/shm:tmpfs" {
		t.Fatalf("mounts: %v", dests)
	}
	all := strings.Join(skipped, "\n")
	for _, want := range []string{"/proc/42/ns/ipc", "network namespace", "namespace cgroup", "cgroup mount on /sys/fs/cgroup",
		"bind mount /var/lib/containerd/hosts on /etc/hosts", "bind mount /run/resolv.conf on /etc/resolv.conf",
		"/run/containerd/shm on /dev/shm", "nfs mount on /data"} {
		if !strings.Contains(all, want) {
			t.Errorf("skipped lacks %q:\n%s", want, all)
		}
	}
}
