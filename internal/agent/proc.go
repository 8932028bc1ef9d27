package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"golang.org/x/sys/unix"
)

// ring keeps the most recent bytes of an output stream, addressed by
// absolute offsets: [start, end) is retained. Its backing array grows on
// demand up to max, so quiet processes cost little.
type ring struct {
	buf        []byte
	max        int
	start, end int64
}

func (r *ring) grow(need int) {
	if need <= len(r.buf) || len(r.buf) >= r.max {
		return
	}
	size := max(len(r.buf)*2, 4096, need)
	size = min(size, r.max)
	nb := make([]byte, size)
	// Re-place the retained bytes at their offsets modulo the new size.
	for off := r.start; off < r.end; {
		i := int(off % int64(len(r.buf)))
		chunk := min(int64(len(r.buf)-i), r.end-off)
		src := r.buf[i : i+int(chunk)]
		for len(src) > 0 {
			j := int(off % int64(size))
			n := copy(nb[j:], src)
			src, off = src[n:], off+int64(n)
		}
	}
	r.buf = nb
}

func (r *ring) write(p []byte) {
	if len(p) > r.max {
		r.end += int64(len(p) - r.max)
		r.start = r.end
		p = p[len(p)-r.max:]
	}
	r.grow(int(r.end-r.start) + len(p))
	size := int64(len(r.buf))
	for len(p) > 0 {
		i := int(r.end % size)
		n := copy(r.buf[i:], p)
		p, r.end = p[n:], r.end+int64(n)
	}
	if r.end-r.start > size {
		r.start = r.end - size
	}
}

// readAt copies retained bytes from off (>= start) into p.
func (r *ring) readAt(off int64, p []byte) int {
	if off < r.start || off >= r.end || len(r.buf) == 0 {
		return 0
	}
	n := 0
	size := int64(len(r.buf))
	for n < len(p) && off < r.end {
		i := int(off % size)
		k := copy(p[n:], r.buf[i:min(int64(len(r.buf)), int64(i)+r.end-off)])
		n += k
		off += int64(k)
	}
	return n
}

// bgProc is one background process.
type bgProc struct {
	handle  string
	argv    []string
	pid     int
	started time.Time

	mu      sync.Mutex
	out     [2]ring // stdout, stderr
	open    int     // output pipes not yet drained
	exit    *pb.Exit
	exited  time.Time
	changed chan struct{} // closed and replaced on every change
	waiters int

	stdinMu   sync.Mutex
	stdin     *os.File // nil once closed; guarded by stdinMu
	stdinOpen atomic.Bool
}

// notify wakes waiters; p.mu must be held.
func (p *bgProc) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *bgProc) done() bool { return p.exit != nil && p.open == 0 }

func (p *bgProc) info() *pb.ProcInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	stdinOpen := p.stdinOpen.Load()
	in := &pb.ProcInfo{
		Handle: p.handle, Pid: int32(p.pid), Argv: p.argv, State: "running",
		StartedUnixNano: p.started.UnixNano(),
		StdoutBytes:     p.out[0].end, StderrBytes: p.out[1].end,
		StdoutDropped: p.out[0].start, StderrDropped: p.out[1].start,
		StdinOpen: stdinOpen,
	}
	if p.exit != nil {
		in.State, in.Exit, in.ExitedUnixNano = "exited", p.exit, p.exited.UnixNano()
	}
	return in
}

// procTable holds the background processes of the guest. Its zero value
// is ready to use.
type procTable struct {
	mu    sync.Mutex
	next  int
	procs map[string]*bgProc
}

// prune drops exited processes past their retention and the oldest exited
// ones beyond MaxExitedProcs; t.mu must be held.
func (t *procTable) prune(now time.Time) {
	var exited []*bgProc
	for h, p := range t.procs {
		p.mu.Lock()
		ex, at := p.exit != nil, p.exited
		p.mu.Unlock()
		if !ex {
			continue
		}
		if now.Sub(at) > agentapi.ProcRetention {
			delete(t.procs, h)
			continue
		}
		exited = append(exited, p)
	}
	if len(exited) > agentapi.MaxExitedProcs {
		sort.Slice(exited, func(i, j int) bool { return exited[i].exited.Before(exited[j].exited) })
		for _, p := range exited[:len(exited)-agentapi.MaxExitedProcs] {
			delete(t.procs, p.handle)
		}
	}
}

func (t *procTable) running() int {
	n := 0
	for _, p := range t.procs {
		p.mu.Lock()
		if p.exit == nil {
			n++
		}
		p.mu.Unlock()
	}
	return n
}

func (t *procTable) get(handle string) (*bgProc, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.procs[handle]
	if !ok {
		return nil, errdefs.WithReason(errdefs.KindNotFound, errdefs.ReasonProcess, fmt.Errorf("no process %q in this sandbox (exited processes are kept for %s)", handle, agentapi.ProcRetention))
	}
	return p, nil
}

func (s *server) ProcStart(_ context.Context, req *pb.ProcStartRequest) (*pb.ProcInfo, error) {
	s.markRequest()
	st := req.Start
	if st == nil {
		return nil, errdefs.New(errdefs.KindInvalidArgument, errors.New("ProcStart needs a start"))
	}
	if st.Tty {
		return nil, errdefs.New(errdefs.KindInvalidArgument, errors.New("background processes have no terminal; run the command in the foreground for a tty"))
	}
	if st.Bundle != nil {
		return nil, errdefs.New(errdefs.KindInvalidArgument, errors.New("bundle processes run through Exec, not as background processes"))
	}
	if err := validateStart(st); err != nil {
		return nil, err
	}
	argv := st.Argv
	if st.Entrypoint {
		if len(s.image.Command) == 0 {
			return nil, errdefs.New(errdefs.KindFailedPrecondition, errors.New("this image declares no command"))
		}
		argv = append(append([]string(nil), s.image.Command...), argv...)
	} else if s.sealed() {
		return nil, errdefs.WithReason(errdefs.KindRefused, errdefs.ReasonSealed, errors.New("refused by the image profile \"sealed\": ad-hoc processes are disabled; start the image's declared command instead"))
	}
	if len(argv) == 0 {
		return nil, errdefs.New(errdefs.KindInvalidArgument, errors.New("empty argv"))
	}
	env, pathEnv := s.buildEnv(st.Env, false)
	bin, err := lookPath(argv[0], pathEnv)
	if err != nil {
		return nil, err
	}
	cwd := st.Cwd
	if cwd == "" {
		cwd = s.image.Workdir
	}
	if cwd == "" {
		cwd = "/"
	}
	if fi, err := os.Stat(cwd); err != nil || !fi.IsDir() {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "working directory %s: not a directory in the guest", cwd)
	}

	t := &s.bg
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.procs == nil {
		t.procs = map[string]*bgProc{}
	}
	t.prune(time.Now())
	if t.running() >= agentapi.MaxProcs {
		return nil, errdefs.Errorf(errdefs.KindLimitExceeded, "too many background processes: %d are running (the cap); wait for or kill some first", agentapi.MaxProcs)
	}

	cmd := &exec.Cmd{Path: bin, Args: argv, Env: env, Dir: cwd,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}
	var closeAfter, readers []*os.File
	cleanup := func() {
		for _, f := range append(closeAfter, readers...) {
			f.Close()
		}
	}
	or, ow, err := os.Pipe()
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindGuest, "pipe: %v", err)
	}
	readers, closeAfter = append(readers, or), append(closeAfter, ow)
	er, ew, err := os.Pipe()
	if err != nil {
		cleanup()
		return nil, errdefs.Errorf(errdefs.KindGuest, "pipe: %v", err)
	}
	readers, closeAfter = append(readers, er), append(closeAfter, ew)
	cmd.Stdout, cmd.Stderr = ow, ew
	var stdinW *os.File
	if st.Stdin {
		ir, iw, err := os.Pipe()
		if err != nil {
			cleanup()
			return nil, errdefs.Errorf(errdefs.KindGuest, "pipe: %v", err)
		}
		cmd.Stdin, stdinW = ir, iw
		closeAfter = append(closeAfter, ir)
	}
	waitCh, err := s.reaper.start(cmd)
	for _, f := range closeAfter {
		f.Close()
	}
	if err != nil {
		for _, f := range readers {
			f.Close()
		}
		if stdinW != nil {
			stdinW.Close()
		}
		if errors.Is(err, os.ErrPermission) {
			return nil, errdefs.WithReason(errdefs.KindPermissionDenied, errdefs.ReasonCommand, fmt.Errorf("%s: permission denied", argv[0]))
		}
		return nil, errdefs.Errorf(errdefs.KindGuest, "start %s: %v", argv[0], err)
	}
	t.next++
	p := &bgProc{
		handle: "p" + strconv.Itoa(t.next), argv: argv, pid: cmd.Process.Pid, started: time.Now(),
		open: 2, changed: make(chan struct{}), stdin: stdinW,
	}
	p.out[0].max, p.out[1].max = agentapi.ProcOutputBytes, agentapi.ProcOutputBytes
	p.stdinOpen.Store(stdinW != nil)
	t.procs[p.handle] = p
	s.trackProcess(p.pid, 1)
	for i, r := range readers {
		go p.pump(i, r)
	}
	go s.watch(p, waitCh, readers)
	return p.info(), nil
}

// pump moves one output pipe into its ring. It never blocks on readers:
// when nobody keeps up, the oldest bytes are dropped and readers are told.
func (p *bgProc) pump(fd int, r *os.File) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			p.mu.Lock()
			p.out[fd].write(buf[:n])
			p.notify()
			p.mu.Unlock()
		}
		if err != nil {
			break
		}
	}
	p.mu.Lock()
	p.open--
	p.notify()
	p.mu.Unlock()
}

func (s *server) watch(p *bgProc, waitCh <-chan unix.WaitStatus, readers []*os.File) {
	ws := <-waitCh
	s.trackProcess(p.pid, -1)
	code, sig := exitCode(ws)
	p.mu.Lock()
	p.exit, p.exited = &pb.Exit{Code: code, Signal: sig}, time.Now()
	p.notify()
	p.mu.Unlock()
	// A ProcStdin call may hold the stdin lock while it waits for its
	// client; writes to the dead process fail on their own meanwhile.
	go p.closeStdin()
	// Output still in the pipes is read for a moment; a grandchild that
	// keeps them open does not keep the process "running".
	time.Sleep(drainGrace)
	p.mu.Lock()
	open := p.open
	p.mu.Unlock()
	if open > 0 {
		for _, f := range readers {
			f.Close()
		}
	}
}

func (p *bgProc) closeStdin() {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	p.stdinOpen.Store(false)
}

func (s *server) ProcList(context.Context, *pb.ProcListRequest) (*pb.ProcListResponse, error) {
	t := &s.bg
	t.mu.Lock()
	t.prune(time.Now())
	procs := make([]*bgProc, 0, len(t.procs))
	for _, p := range t.procs {
		procs = append(procs, p)
	}
	t.mu.Unlock()
	sort.Slice(procs, func(i, j int) bool { return procs[i].started.Before(procs[j].started) })
	out := &pb.ProcListResponse{}
	for _, p := range procs {
		out.Procs = append(out.Procs, p.info())
	}
	return out, nil
}

func (s *server) ProcWait(req *pb.ProcWaitRequest, stream pb.Agent_ProcWaitServer) error {
	p, err := s.bg.get(req.Handle)
	if err != nil {
		return err
	}
	if req.StdoutOffset < 0 || req.StderrOffset < 0 {
		return errdefs.New(errdefs.KindInvalidArgument, errors.New("offsets must not be negative"))
	}
	p.mu.Lock()
	if p.waiters >= agentapi.MaxProcWaiters {
		p.mu.Unlock()
		return errdefs.Errorf(errdefs.KindLimitExceeded, "process %s already has %d readers (the cap)", p.handle, agentapi.MaxProcWaiters)
	}
	p.waiters++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.waiters--
		p.mu.Unlock()
	}()
	cur := [2]int64{req.StdoutOffset, req.StderrOffset}
	buf := make([]byte, agentapi.ChunkBytes)
	ctx := stream.Context()
	for {
		var msgs []*pb.ProcOutput
		p.mu.Lock()
		for fd := range cur {
			r := &p.out[fd]
			if cur[fd] > r.end {
				cur[fd] = r.end
			}
			if cur[fd] < r.start {
				msgs = append(msgs, &pb.ProcOutput{Msg: &pb.ProcOutput_Gap{Gap: &pb.OutputGap{Fd: int32(fd + 1), Lost: r.start - cur[fd]}}})
				cur[fd] = r.start
			}
			if n := r.readAt(cur[fd], buf); n > 0 {
				chunk := append([]byte(nil), buf[:n]...)
				cur[fd] += int64(n)
				if fd == 0 {
					msgs = append(msgs, &pb.ProcOutput{Msg: &pb.ProcOutput_Stdout{Stdout: chunk}})
				} else {
					msgs = append(msgs, &pb.ProcOutput{Msg: &pb.ProcOutput_Stderr{Stderr: chunk}})
				}
			}
		}
		done := p.done()
		exit := p.exit
		changed := p.changed
		p.mu.Unlock()
		for _, m := range msgs {
			if err := stream.Send(m); err != nil {
				return err
			}
		}
		if len(msgs) > 0 {
			continue
		}
		if done {
			return stream.Send(&pb.ProcOutput{Msg: &pb.ProcOutput_Exit{Exit: exit}})
		}
		if req.NoFollow {
			return stream.Send(&pb.ProcOutput{Msg: &pb.ProcOutput_Running{Running: p.info()}})
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *server) ProcSignal(_ context.Context, req *pb.ProcSignalRequest) (*pb.ProcInfo, error) {
	if req.All {
		return &pb.ProcInfo{}, signalAll(req.Signal)
	}
	p, err := s.bg.get(req.Handle)
	if err != nil {
		return nil, err
	}
	if req.Signal <= 0 || req.Signal >= 65 {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "signal %d: must be between 1 and 64", req.Signal)
	}
	p.mu.Lock()
	exited := p.exit != nil
	p.mu.Unlock()
	if !exited {
		// The process leads its own group: its children get it too.
		if err := unix.Kill(-p.pid, unix.Signal(req.Signal)); err != nil && err != unix.ESRCH {
			return nil, errdefs.Errorf(errdefs.KindGuest, "signal %s: %v", p.handle, err)
		}
	}
	return p.info(), nil
}

func (s *server) ProcStdin(stream pb.Agent_ProcStdinServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h, ok := first.Msg.(*pb.ProcStdinInput_Handle)
	if !ok {
		return errdefs.New(errdefs.KindInvalidArgument, errors.New("the first ProcStdin message must name the process"))
	}
	p, err := s.bg.get(h.Handle)
	if err != nil {
		return err
	}
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		return errdefs.WithReason(errdefs.KindFailedPrecondition, errdefs.ReasonNoStdin, fmt.Errorf("process %s has no open stdin (it was started without stdin, closed it, or exited)", p.handle))
	}
	var n int64
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&pb.ProcStdinResponse{Bytes: n})
		}
		if err != nil {
			return err
		}
		switch v := m.Msg.(type) {
		case *pb.ProcStdinInput_Data:
			if p.stdin == nil {
				return errdefs.WithReason(errdefs.KindFailedPrecondition, errdefs.ReasonNoStdin, fmt.Errorf("process %s: stdin is closed", p.handle))
			}
			k, err := p.stdin.Write(v.Data)
			n += int64(k)
			if err != nil {
				p.stdin.Close()
				p.stdin = nil
				p.stdinOpen.Store(false)
				return errdefs.WithReason(errdefs.KindFailedPrecondition, errdefs.ReasonNoStdin, fmt.Errorf("process %s: stdin closed (%v)", p.handle, err))
			}
		case *pb.ProcStdinInput_Close:
			if v.Close && p.stdin != nil {
				p.stdin.Close()
				p.stdin = nil
				p.stdinOpen.Store(false)
			}
		default:
			return errdefs.Errorf(errdefs.KindInvalidArgument, "unexpected %T in ProcStdin", m.Msg)
		}
	}
}
