package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

var empty = &ptypes.Empty{}

// Event is one event for containerd, with its topic.
type Event struct {
	Topic string
	Event any
}

// Service is the task service of one shim: one container, one VM.
type Service struct {
	vms       VMs
	namespace string
	shutdown  func()

	evmu     sync.Mutex
	events   chan Event
	evClosed bool
	// ctx outlives the RPCs: the processes run under it.
	ctx context.Context

	mu sync.Mutex
	c  *container
	// deleted is set once the container is deleted: the shim may exit.
	deleted bool
}

type container struct {
	id, bundle, rootfs string
	spec               *specs.Spec // the bundle's config.json
	mounted            bool
	vm                 *VM
	init               *process
	execs              map[string]*process
	// runningExecs counts started execs that have not exited, under
	// Service.mu; execsGone is signalled when it drops to 0. initExiting
	// refuses new execs once the task's process has exited.
	runningExecs int
	execsGone    *sync.Cond
	initExiting  bool
	// paused is set while the VM is frozen (Pause), under Service.mu.
	paused  bool
	profile string
}

// NewService is a task service that calls shutdown when the shim may
// exit. Its events are read from Events until CloseEvents.
func NewService(ctx context.Context, vms VMs, namespace string, shutdown func()) *Service {
	return &Service{vms: vms, namespace: namespace, events: make(chan Event, 256), shutdown: shutdown, ctx: ctx}
}

// Events are the events for containerd, in order.
func (s *Service) Events() <-chan Event { return s.events }

// CloseEvents ends Events; later events are dropped.
func (s *Service) CloseEvents() {
	s.evmu.Lock()
	defer s.evmu.Unlock()
	if !s.evClosed {
		s.evClosed = true
		close(s.events)
	}
}

var _ taskAPI.TaskService = (*Service)(nil)

// RegisterTTRPC registers the task service (containerd's shim package
// calls it).
func (s *Service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTaskService(server, s)
	return nil
}

func (s *Service) send(topic string, evt any) {
	s.evmu.Lock()
	defer s.evmu.Unlock()
	if !s.evClosed {
		s.events <- Event{Topic: topic, Event: evt}
	}
}

// StateFile is written into the bundle: what `delete` must clean up
// after a shim that died.
const StateFile = "mvm-shim.json"

// BundleState is the content of StateFile.
type BundleState struct {
	SandboxID string `json:"sandbox_id"`
	Rootfs    string `json:"rootfs,omitempty"`
	Mounted   bool   `json:"mounted"`
}

// Create mounts the container's root filesystem, reads its OCI spec and
// boots its VM. The process starts with Start.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil {
		return nil, fmt.Errorf("%w: this shim already runs task %s (the mvm shim runs one container per VM)", errdefs.ErrAlreadyExists, s.c.id)
	}
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, fmt.Errorf("%w: the mvm shim cannot restore a checkpoint", errdefs.ErrNotImplemented)
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, err
	}
	res := MapResources(spec)
	pol, err := MapPolicy(spec.Annotations)
	if err != nil {
		return nil, err
	}
	if r.Terminal {
		if err := terminalAllowed(pol.Profile); err != nil {
			return nil, err
		}
	}
	c := &container{id: r.ID, bundle: r.Bundle, rootfs: filepath.Join(r.Bundle, "rootfs"), execs: map[string]*process{}, profile: pol.Profile}
	c.execsGone = sync.NewCond(&s.mu)
	if spec.Root != nil && spec.Root.Path != "" && len(r.Rootfs) == 0 {
		c.rootfs = spec.Root.Path
		if !filepath.IsAbs(c.rootfs) {
			c.rootfs = filepath.Join(r.Bundle, c.rootfs)
		}
	}
	defer func() {
		if err != nil {
			s.cleanup(c)
		}
	}()
	if len(r.Rootfs) > 0 {
		if err := mountRootfs(r.Rootfs, c.rootfs); err != nil {
			return nil, err
		}
		c.mounted = true
	}
	if err := writeBundleState(r.Bundle, BundleState{Rootfs: c.rootfs, Mounted: c.mounted}); err != nil {
		return nil, err
	}
	stdio := Stdio{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}
	if spec.Process.Terminal != r.Terminal {
		spec.Process.Terminal = r.Terminal
	}
	c.spec = spec
	c.init = newProcess("", spec.Process, stdio)
	if c.init.io, err = openIO(ctx, stdio); err != nil {
		return nil, err
	}
	vm, err := s.vms.Boot(ctx, BootRequest{
		Namespace: s.namespace, ContainerID: r.ID, Bundle: r.Bundle, RootDir: c.rootfs,
		ReadOnlyRoot: spec.Root != nil && spec.Root.Readonly, Hostname: spec.Hostname,
		Resources: res, Policy: pol,
	})
	if err != nil {
		return nil, err
	}
	c.vm = vm
	if err := writeBundleState(r.Bundle, BundleState{SandboxID: vm.ID, Rootfs: c.rootfs, Mounted: c.mounted}); err != nil {
		return nil, err
	}
	s.c = c
	s.send(runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs,
		IO:  &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Pid: uint32(vm.VMMPID),
	})
	return &taskAPI.CreateTaskResponse{Pid: uint32(vm.VMMPID)}, nil
}

func mountRootfs(ms []*types.Mount, target string) error {
	if err := os.MkdirAll(target, 0o711); err != nil {
		return fmt.Errorf("create rootfs %s: %w", target, err)
	}
	var mounts []mount.Mount
	for _, m := range ms {
		mounts = append(mounts, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	if err := mount.All(mounts, target); err != nil {
		mount.UnmountAll(target, 0)
		return fmt.Errorf("mount rootfs at %s: %w", target, err)
	}
	return nil
}

func writeBundleState(bundle string, st BundleState) error {
	b, _ := json.Marshal(st)
	tmp := filepath.Join(bundle, StateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", StateFile, err)
	}
	return os.Rename(tmp, filepath.Join(bundle, StateFile))
}

// cleanup takes a container's VM down and unmounts its rootfs.
func (s *Service) cleanup(c *container) error {
	var first error
	if c.vm != nil {
		if err := s.vms.Down(context.WithoutCancel(s.ctx), c.vm.ID); err != nil {
			first = err
		}
		if c.vm.Hold != nil {
			c.vm.Hold.Close()
		}
	}
	if c.init != nil {
		c.init.io.close()
	}
	if c.mounted {
		if err := mount.UnmountAll(c.rootfs, 0); err != nil && first == nil {
			first = fmt.Errorf("unmount rootfs %s: %w", c.rootfs, err)
		}
	}
	os.Remove(filepath.Join(c.bundle, StateFile))
	return first
}

func (s *Service) get(id, execID string) (*container, *process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil || s.c.id != id {
		return nil, nil, fmt.Errorf("task %s: %w", id, errdefs.ErrNotFound)
	}
	if execID == "" {
		return s.c, s.c.init, nil
	}
	p, ok := s.c.execs[execID]
	if !ok {
		return nil, nil, fmt.Errorf("exec %s of task %s: %w", execID, id, errdefs.ErrNotFound)
	}
	return s.c, p, nil
}

// Start runs the task's process (or an exec) in the VM and returns once
// it runs.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.status != task.Status_CREATED {
		p.mu.Unlock()
		return nil, fmt.Errorf("process %s of task %s is %s: %w", p.name(), r.ID, p.status, errdefs.ErrFailedPrecondition)
	}
	p.status = task.Status_RUNNING
	p.mu.Unlock()
	if p.execID != "" {
		s.mu.Lock()
		exiting := c.initExiting
		if !exiting {
			c.runningExecs++
		}
		s.mu.Unlock()
		if exiting {
			p.stopUnstarted(int(syscall.SIGKILL))
			return nil, fmt.Errorf("start %s in task %s: the task has exited: %w", p.name(), r.ID, errdefs.ErrFailedPrecondition)
		}
	}
	var bundleSpec *specs.Spec
	if p.execID == "" {
		bundleSpec = c.spec
	}
	pid, err := s.vms.Start(ctx, c.vm.ID, ProcessRequest{
		ID: p.procID(), Process: p.spec, Init: p.execID == "", Spec: bundleSpec,
		Stdin: p.io.stdin, Stdout: p.io.stdout, Stderr: p.io.stderr,
	})
	if err != nil {
		// It never ran: it is over (127 when the command was not found,
		// as a shell says), and a waiter hears so.
		status := uint32(255)
		if errdefs.IsNotFound(err) {
			status = 127
		}
		close(p.published)
		go s.exited(c, p, status)
		return nil, fmt.Errorf("start %s in task %s: %w", p.name(), r.ID, err)
	}
	p.mu.Lock()
	p.pid = pid
	p.mu.Unlock()
	if p.execID == "" {
		s.send(runtime.TaskStartEventTopic, &eventstypes.TaskStart{ContainerID: c.id, Pid: uint32(c.vm.VMMPID)})
	} else {
		s.send(runtime.TaskExecStartedEventTopic, &eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: p.execID, Pid: uint32(pid)})
	}
	close(p.published)
	go s.wait(c, p)
	return &taskAPI.StartResponse{Pid: uint32(s.hostPid(c, p))}, nil
}

// hostPid is the pid containerd is told: the VMM's for the task (it is
// the host process that holds the container), the guest pid for an exec.
func (s *Service) hostPid(c *container, p *process) int {
	if p.execID == "" {
		return c.vm.VMMPID
	}
	_, pid, _, _ := p.state()
	return pid
}

// wait waits for p to exit in the VM, then reports it.
func (s *Service) wait(c *container, p *process) {
	status := uint32(255)
	exit, err := s.vms.Wait(s.ctx, c.vm.ID, p.procID())
	if err == nil {
		status = exit.Status()
	} else {
		fmt.Fprintf(os.Stderr, "mvm shim: process %s of task %s: %v\n", p.name(), c.id, err)
	}
	s.exited(c, p, status)
}

// exited records p's exit and publishes it: for the task's own process
// once the execs it leaves are gone (the VM kills them when it exits).
func (s *Service) exited(c *container, p *process, status uint32) {
	p.io.close()
	<-p.published
	if p.execID == "" {
		s.mu.Lock()
		c.initExiting = true
		s.mu.Unlock()
		s.killExecs(c)
		s.mu.Lock()
		for c.runningExecs > 0 {
			c.execsGone.Wait()
		}
		s.mu.Unlock()
	}
	if !p.setExited(status) {
		return
	}
	if p.execID != "" {
		s.mu.Lock()
		if c.runningExecs--; c.runningExecs == 0 {
			c.execsGone.Broadcast()
		}
		s.mu.Unlock()
	}
	_, pid, st, at := p.state()
	id := p.execID
	if id == "" {
		id = c.id
		pid = c.vm.VMMPID
	}
	s.send(runtime.TaskExitEventTopic, &eventstypes.TaskExit{
		ContainerID: c.id, ID: id, Pid: uint32(pid), ExitStatus: st, ExitedAt: protobuf.ToTimestamp(at),
	})
}

func (s *Service) killExecs(c *container) {
	s.mu.Lock()
	var ps []*process
	for _, p := range c.execs {
		ps = append(ps, p)
	}
	s.mu.Unlock()
	for _, p := range ps {
		if st, _, _, _ := p.state(); st == task.Status_RUNNING {
			s.vms.Signal(s.ctx, c.vm.ID, p.procID(), int(syscall.SIGKILL), false)
		}
	}
}

// Delete removes an exec, or the task: its VM goes down and its rootfs is
// unmounted.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st, pid, exit, at := p.state()
	if st == task.Status_RUNNING {
		return nil, fmt.Errorf("process %s of task %s is running; kill it first: %w", p.name(), r.ID, errdefs.ErrFailedPrecondition)
	}
	if r.ExecID != "" {
		s.mu.Lock()
		delete(c.execs, r.ExecID)
		s.mu.Unlock()
		p.io.close()
		if st == task.Status_STOPPED {
			s.vms.Forget(ctx, c.vm.ID, p.procID())
		}
		return &taskAPI.DeleteResponse{Pid: uint32(pid), ExitStatus: exit, ExitedAt: protobuf.ToTimestamp(at)}, nil
	}
	if st == task.Status_CREATED {
		// Never started: it ends here, as if killed.
		p.io.close()
		p.setExited(128 + uint32(syscall.SIGKILL))
		_, _, exit, at = p.state()
	}
	s.mu.Lock()
	s.c = nil
	s.deleted = true
	s.mu.Unlock()
	cerr := s.cleanup(c)
	s.send(runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{
		ContainerID: c.id, ID: c.id, Pid: uint32(c.vm.VMMPID), ExitStatus: exit, ExitedAt: protobuf.ToTimestamp(at),
	})
	if cerr != nil {
		return nil, fmt.Errorf("delete task %s: %w", r.ID, cerr)
	}
	return &taskAPI.DeleteResponse{Pid: uint32(c.vm.VMMPID), ExitStatus: exit, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// Exec adds a process to the task; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*ptypes.Empty, error) {
	c, _, err := s.get(r.ID, "")
	if err != nil {
		return nil, err
	}
	if st, _, _, _ := c.init.state(); st == task.Status_STOPPED {
		return nil, fmt.Errorf("task %s has exited: %w", r.ID, errdefs.ErrFailedPrecondition)
	}
	if r.ExecID == "" {
		return nil, fmt.Errorf("%w: exec id is empty", errdefs.ErrInvalidArgument)
	}
	if r.Spec == nil || len(r.Spec.Value) > maxConfigBytes {
		return nil, fmt.Errorf("%w: exec %s has no process spec (or one larger than %d bytes)", errdefs.ErrInvalidArgument, r.ExecID, maxConfigBytes)
	}
	var spec specs.Process
	if err := json.Unmarshal(r.Spec.Value, &spec); err != nil {
		return nil, fmt.Errorf("%w: exec %s: process spec: %v", errdefs.ErrInvalidArgument, r.ExecID, err)
	}
	if len(spec.Args) == 0 {
		return nil, fmt.Errorf("%w: exec %s has no args", errdefs.ErrInvalidArgument, r.ExecID)
	}
	spec.Terminal = r.Terminal
	if r.Terminal {
		if err := terminalAllowed(c.profile); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	if _, ok := c.execs[r.ExecID]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("exec %s of task %s: %w", r.ExecID, r.ID, errdefs.ErrAlreadyExists)
	}
	stdio := Stdio{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}
	p := newProcess(r.ExecID, &spec, stdio)
	c.execs[r.ExecID] = p
	s.mu.Unlock()
	if p.io, err = openIO(ctx, stdio); err != nil {
		s.mu.Lock()
		delete(c.execs, r.ExecID)
		s.mu.Unlock()
		return nil, err
	}
	s.send(runtime.TaskExecAddedEventTopic, &eventstypes.TaskExecAdded{ContainerID: c.id, ExecID: r.ExecID})
	return empty, nil
}

// State reports a process.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st, _, exit, at := p.state()
	id := r.ExecID
	if id == "" {
		id = c.id
	}
	s.mu.Lock()
	if c.paused && st == task.Status_RUNNING {
		st = task.Status_PAUSED
	}
	s.mu.Unlock()
	return &taskAPI.StateResponse{
		ID: id, Bundle: c.bundle, Pid: uint32(s.hostPid(c, p)), Status: st,
		Stdin: p.stdio.Stdin, Stdout: p.stdio.Stdout, Stderr: p.stdio.Stderr, Terminal: p.stdio.Terminal,
		ExitStatus: exit, ExitedAt: protobuf.ToTimestamp(at), ExecID: r.ExecID,
	}, nil
}

// Kill signals a process, or with All every process of the task.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*ptypes.Empty, error) {
	c, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Signal == 0 || r.Signal > 64 {
		return nil, fmt.Errorf("%w: signal %d", errdefs.ErrInvalidArgument, r.Signal)
	}
	sig := int(r.Signal)
	if p.stopUnstarted(sig) {
		_, _, st, at := p.state()
		id := p.execID
		if id == "" {
			id = c.id
		}
		s.send(runtime.TaskExitEventTopic, &eventstypes.TaskExit{
			ContainerID: c.id, ID: id, Pid: uint32(s.hostPid(c, p)), ExitStatus: st, ExitedAt: protobuf.ToTimestamp(at),
		})
		return empty, nil
	}
	s.mu.Lock()
	paused := c.paused
	if paused && sig == int(syscall.SIGKILL) {
		// SIGKILL ends a paused task, as it ends a frozen container: the
		// VM runs again only to die.
		if err := s.vms.Resume(ctx, c.vm.ID); err != nil {
			s.mu.Unlock()
			return nil, fmt.Errorf("resume task %s to kill it: %w", r.ID, err)
		}
		c.paused, paused = false, false
		s.send(runtime.TaskResumedEventTopic, &eventstypes.TaskResumed{ContainerID: c.id})
	}
	s.mu.Unlock()
	if paused {
		return nil, fmt.Errorf("task %s is paused: resume it before signalling its processes (SIGKILL is let through): %w", r.ID, errdefs.ErrFailedPrecondition)
	}
	if st, _, _, _ := p.state(); st == task.Status_STOPPED && !r.All {
		return nil, fmt.Errorf("process %s of task %s: %w: process already finished", p.name(), r.ID, errdefs.ErrNotFound)
	}
	if err := s.vms.Signal(ctx, c.vm.ID, p.procID(), sig, r.All); err != nil {
		return nil, fmt.Errorf("signal %d to %s of task %s: %w", sig, p.name(), r.ID, err)
	}
	return empty, nil
}

// Wait returns once the process has exited.
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	_, _, exit, at := p.state()
	return &taskAPI.WaitResponse{ExitStatus: exit, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// Pids lists the VM's processes by their guest pids (the agent's own
// excepted); those the shim started name their exec id.
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, _, err := s.get(r.ID, "")
	if err != nil {
		return nil, err
	}
	ps, err := s.vms.Pids(ctx, c.vm.ID)
	if err != nil {
		return nil, fmt.Errorf("pids of task %s: %w", r.ID, err)
	}
	var out []*task.ProcessInfo
	for _, p := range ps {
		info := &task.ProcessInfo{Pid: uint32(p.Pid)}
		if p.ID != "" && p.ID != initID {
			a, err := typeurl.MarshalAny(&options.ProcessDetails{ExecID: p.ID})
			if err != nil {
				return nil, err
			}
			info.Info = protobuf.FromAny(a)
		}
		out = append(out, info)
	}
	return &taskAPI.PidsResponse{Processes: out}, nil
}

// ResizePty resizes a process's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*ptypes.Empty, error) {
	c, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if !p.stdio.Terminal {
		return nil, fmt.Errorf("process %s of task %s has no terminal: %w", p.name(), r.ID, errdefs.ErrFailedPrecondition)
	}
	if st, _, _, _ := p.state(); st != task.Status_RUNNING || r.Width == 0 || r.Height == 0 {
		return empty, nil // containerd may resize before start; the size then comes with the process
	}
	if err := s.vms.Resize(ctx, c.vm.ID, p.procID(), r.Height, r.Width); err != nil && !errdefs.IsNotFound(err) {
		return nil, err
	}
	return empty, nil
}

// CloseIO closes a process's stdin once what the client wrote is through.
func (s *Service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*ptypes.Empty, error) {
	_, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin {
		p.io.closeStdin()
	}
	return empty, nil
}

// Stats reports the VM's metrics in cgroup v2's shape.
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, _, err := s.get(r.ID, "")
	if err != nil {
		return nil, err
	}
	st, err := s.vms.Stats(ctx, c.vm.ID)
	if err != nil {
		return nil, fmt.Errorf("stats of task %s: %w", r.ID, err)
	}
	a, err := typeurl.MarshalAny(metrics(st))
	if err != nil {
		return nil, err
	}
	return &taskAPI.StatsResponse{Stats: protobuf.FromAny(a)}, nil
}

// Connect reports the shim's and the task's pids.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid())}
	if c, _, err := s.get(r.ID, ""); err == nil {
		resp.TaskPid = uint32(c.vm.VMMPID)
	}
	return resp, nil
}

// Shutdown lets the shim exit once its task is deleted.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*ptypes.Empty, error) {
	s.mu.Lock()
	busy := s.c != nil
	s.mu.Unlock()
	if busy {
		return empty, nil
	}
	s.shutdown()
	return empty, nil
}

// Pause freezes the task's VM in memory (its vCPUs stop; `ctr task
// pause`). While paused, the task reports PAUSED and signals are refused.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	c, p, err := s.get(r.ID, "")
	if err != nil {
		return nil, err
	}
	if st, _, _, _ := p.state(); st != task.Status_RUNNING {
		return nil, fmt.Errorf("task %s is %s, not running: %w", r.ID, st, errdefs.ErrFailedPrecondition)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.paused {
		return empty, nil
	}
	if err := s.vms.Pause(ctx, c.vm.ID); err != nil {
		return nil, fmt.Errorf("pause task %s: %w", r.ID, err)
	}
	c.paused = true
	s.send(runtime.TaskPausedEventTopic, &eventstypes.TaskPaused{ContainerID: c.id})
	return empty, nil
}

// Resume lets a paused task's VM run again.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	c, _, err := s.get(r.ID, "")
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !c.paused {
		return nil, fmt.Errorf("task %s is not paused: %w", r.ID, errdefs.ErrFailedPrecondition)
	}
	if err := s.vms.Resume(ctx, c.vm.ID); err != nil {
		return nil, fmt.Errorf("resume task %s: %w", r.ID, err)
	}
	c.paused = false
	s.send(runtime.TaskResumedEventTopic, &eventstypes.TaskResumed{ContainerID: c.id})
	return empty, nil
}

// Checkpoint is not offered: VM snapshots are mvm's, not CRIU images.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	return nil, fmt.Errorf("%w: the mvm shim does not checkpoint tasks (CRIU images do not apply to a VM)", errdefs.ErrNotImplemented)
}

// Update is not offered: a VM's CPUs and memory are fixed at boot.
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*ptypes.Empty, error) {
	return nil, fmt.Errorf("%w: the mvm shim cannot change a running task's resources (a VM's CPUs and memory are set at boot)", errdefs.ErrNotImplemented)
}

// Forward publishes events in order until events closes, then calls
// done.
func Forward(ctx context.Context, events <-chan Event, publish func(ctx context.Context, topic string, evt any) error, done func()) {
	for e := range events {
		if err := publish(ctx, e.Topic, e.Event); err != nil {
			fmt.Fprintf(os.Stderr, "mvm shim: publish %s: %v\n", e.Topic, err)
		}
	}
	done()
}
