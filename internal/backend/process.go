package backend

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
)

// Process is a VMM child process, shared by the backends: it dies with its
// parent (PR_SET_PDEATHSIG, so a supervisor killed with SIGKILL takes its
// VM with it), is waited for exactly once, and describes its exit with the
// last line of its log.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}

	mu      sync.Mutex
	exitErr error
}

// StartProcess starts cmd as a VMM named name (for messages) whose own
// log is logPath.
func StartProcess(cmd *exec.Cmd, name, logPath string) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: start: %w", name, err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitErr = describeExit(name, err, logPath)
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func describeExit(name string, err error, logPath string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if b, rerr := os.ReadFile(logPath); rerr == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			lines := strings.Split(s, "\n")
			last := lines[len(lines)-1]
			if len(last) > 512 {
				last = last[:512]
			}
			msg += ": " + last
		}
	}
	return errors.New(name + " " + msg)
}

// Pid is the VMM's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the VMM has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitErr describes how the VMM exited (nil for a clean exit), once Done
// is closed.
func (p *Process) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// Kill ends the VMM at once and waits for it.
func (p *Process) Kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	err := p.cmd.Process.Kill()
	<-p.done
	return err
}
