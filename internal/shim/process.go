package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/fifo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Stdio names a process's stdio as containerd gave it: FIFO paths (or
// plain files), "" when a stream is not wanted.
type Stdio struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// process is one containerd process: the task's init (execID "") or an
// exec, run in the VM by one goroutine.
type process struct {
	execID string
	spec   *specs.Process
	stdio  Stdio

	mu       sync.Mutex
	status   task.Status
	pid      int // guest pid, once started
	exit     uint32
	exitedAt time.Time
	// done closes once the process has exited and its output is flushed.
	done chan struct{}
	// published closes once TaskStart/TaskExecStarted has been sent, so
	// the exit event never overtakes it.
	published chan struct{}
	io        *procIO
}

func newProcess(execID string, spec *specs.Process, stdio Stdio) *process {
	return &process{
		execID: execID, spec: spec, stdio: stdio, status: task.Status_CREATED,
		done: make(chan struct{}), published: make(chan struct{}),
	}
}

func (p *process) state() (task.Status, int, uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status, p.pid, p.exit, p.exitedAt
}

// setExited records the exit, once, and wakes waiters.
func (p *process) setExited(status uint32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status == task.Status_STOPPED {
		return false
	}
	p.status = task.Status_STOPPED
	p.exit = status
	p.exitedAt = time.Now()
	close(p.done)
	return true
}

// stopUnstarted ends a process that never started, as if sig had killed
// it; it reports whether it did.
func (p *process) stopUnstarted(sig int) bool {
	p.mu.Lock()
	created := p.status == task.Status_CREATED
	p.mu.Unlock()
	if !created {
		return false
	}
	p.io.close()
	return p.setExited(uint32(128 + sig))
}

// procID is the process's id in the VM.
func (p *process) procID() string {
	if p.execID == "" {
		return initID
	}
	return p.execID
}

// initID names the task's own process in the VM.
const initID = "init"

func (p *process) name() string {
	if p.execID == "" {
		return "init"
	}
	return p.execID
}

// procIO connects a process to containerd's FIFOs. Writes are raw bytes
// (binary-safe); stdin EOF, or CloseIO, closes the process's stdin.
type procIO struct {
	stdin          io.Reader // what the VM reads: a pipe fed from the FIFO
	stdout, stderr io.Writer

	stdinW    *io.PipeWriter
	stdinF    io.ReadCloser
	stdinDone chan struct{}
	closers   []io.Closer
	closeOnce sync.Once
}

// openTimeout bounds opening a FIFO whose other end containerd's client
// has not opened.
const openTimeout = 30 * time.Second

// openIO opens a process's stdio. Stdout and stderr are opened for
// writing and, like the runc shim does, also for reading, so that the
// FIFO stays open while a client reattaches.
func openIO(ctx context.Context, s Stdio) (_ *procIO, err error) {
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	pio := &procIO{stdinDone: make(chan struct{})}
	defer func() {
		if err != nil {
			pio.close()
		}
	}()
	open := func(path string) (io.Writer, error) {
		if path == "" {
			return nil, nil
		}
		isFifo, err := fifo.IsFifo(path)
		if err != nil {
			return nil, fmt.Errorf("stdio %s: %w", path, err)
		}
		if !isFifo {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return nil, fmt.Errorf("stdio %s: %w (want a FIFO or a file; other log URIs are not supported by the mvm shim)", path, err)
			}
			pio.closers = append(pio.closers, f)
			return f, nil
		}
		w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdio FIFO %s: %w", path, err)
		}
		pio.closers = append(pio.closers, w)
		r, err := fifo.OpenFifo(ctx, path, syscall.O_RDONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdio FIFO %s: %w", path, err)
		}
		pio.closers = append(pio.closers, r)
		return w, nil
	}
	if pio.stdout, err = open(s.Stdout); err != nil {
		return nil, err
	}
	if s.Stderr == s.Stdout && s.Stderr != "" {
		pio.stderr = pio.stdout
	} else if pio.stderr, err = open(s.Stderr); err != nil {
		return nil, err
	}
	if s.Stdin == "" {
		close(pio.stdinDone)
		return pio, nil
	}
	f, err := fifo.OpenFifo(context.WithoutCancel(ctx), s.Stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open stdin FIFO %s: %w", s.Stdin, err)
	}
	pr, pw := io.Pipe()
	pio.stdin, pio.stdinW, pio.stdinF = pr, pw, f
	go func() {
		defer close(pio.stdinDone)
		buf := make([]byte, 32<<10)
		_, err := io.CopyBuffer(pw, f, buf)
		pw.CloseWithError(err) // nil: EOF for the process
	}()
	return pio, nil
}

// closeStdinGrace is how long CloseIO lets the stdin copy drain what the
// client wrote before it closed the FIFO.
const closeStdinGrace = 5 * time.Second

// closeStdin closes the process's stdin (containerd's CloseIO): once the
// client's bytes are through, or after a grace period.
func (pio *procIO) closeStdin() {
	if pio == nil || pio.stdinW == nil {
		return
	}
	select {
	case <-pio.stdinDone:
	case <-time.After(closeStdinGrace):
		pio.stdinF.Close()
		pio.stdinW.Close()
	}
}

// close closes every FIFO: the client's readers see EOF.
func (pio *procIO) close() {
	if pio == nil {
		return
	}
	pio.closeOnce.Do(func() {
		for _, c := range pio.closers {
			c.Close()
		}
		if pio.stdinF != nil {
			pio.stdinF.Close()
		}
		if pio.stdinW != nil {
			pio.stdinW.CloseWithError(errors.New("process exited"))
		}
	})
}
