package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"

	"github.com/creack/pty"
	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	maxArgs     = 4096
	maxEnv      = 1024
	// drainGrace is how long output is still read after the process exits,
	// for pipes a background grandchild keeps open.
	drainGrace = 500 * time.Millisecond
)

// buildEnv merges the image defaults, the request and the PATH/HOME basics.
func (s *server) buildEnv(req map[string]string, tty bool) ([]string, string) {
	env := map[string]string{"PATH": defaultPath, "HOME": "/root", "HOSTNAME": s.currentHostname()}
	if tty {
		env["TERM"] = "xterm-256color"
	}
	if u := s.image.User; u != nil && u.Home != "" {
		env["HOME"] = u.Home
	}
	for k, v := range s.image.Env {
		env[k] = v
	}
	for k, v := range req {
		env[k] = v
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+"="+env[k])
	}
	return out, env["PATH"]
}

// credential is the image's user, or nil (root).
func (s *server) credential() *syscall.Credential {
	u := s.image.User
	if u == nil {
		return nil
	}
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: []uint32{}}
}

// lookPath resolves argv[0] against PATH the way a shell would.
func lookPath(name, path string) (string, error) {
	if strings.Contains(name, "/") {
		st, err := os.Stat(name)
		if err != nil {
			return "", errdefs.WithReason(errdefs.KindNotFound, errdefs.ReasonCommand, fmt.Errorf("%s: no such file", name))
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return "", errdefs.WithReason(errdefs.KindPermissionDenied, errdefs.ReasonCommand, fmt.Errorf("%s: permission denied", name))
		}
		return name, nil
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errdefs.WithReason(errdefs.KindNotFound, errdefs.ReasonCommand, fmt.Errorf("%s: command not found", name))
}

func validateStart(st *pb.ExecStart) error {
	if len(st.Argv) > maxArgs || len(st.Env) > maxEnv {
		return errdefs.Errorf(errdefs.KindInvalidArgument, "too many arguments or environment variables")
	}
	for k := range st.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return errdefs.Errorf(errdefs.KindInvalidArgument, "invalid environment variable name %q", k)
		}
	}
	for _, a := range st.Argv {
		if strings.Contains(a, "\x00") {
			return errdefs.Errorf(errdefs.KindInvalidArgument, "argument contains a NUL byte")
		}
	}
	return nil
}

// execSession is one process bound to one Exec stream.
type execSession struct {
	stream pb.Agent_ExecServer
	sendMu sync.Mutex
}

func (e *execSession) send(out *pb.ExecOutput) error {
	e.sendMu.Lock()
	defer e.sendMu.Unlock()
	return e.stream.Send(out)
}

// pump copies r to the stream as stdout or stderr chunks until EOF.
func (e *execSession) pump(r io.Reader, stderr bool, done chan<- struct{}) {
	defer close(done)
	buf := make([]byte, agentapi.ChunkBytes)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			chunk := append([]byte(nil), buf[:n]...)
			out := &pb.ExecOutput{Msg: &pb.ExecOutput_Stdout{Stdout: chunk}}
			if stderr {
				out = &pb.ExecOutput{Msg: &pb.ExecOutput_Stderr{Stderr: chunk}}
			}
			if e.send(out) != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Exec implements the Exec RPC.
func (s *server) Exec(stream pb.Agent_ExecServer) error {
	s.markRequest()
	in, err := stream.Recv()
	if err != nil {
		return err
	}
	st := in.GetStart()
	if st == nil {
		return errdefs.New(errdefs.KindInvalidArgument, errors.New("the first Exec message must be a start"))
	}
	if err := validateStart(st); err != nil {
		return err
	}
	var hs *helperSpec // set for a process of a bundle sandbox
	if st.Bundle != nil {
		if hs, err = bundleSpec(st, s.rootDir, s.rootReadOnly); err != nil {
			return err
		}
	}
	argv := st.Argv
	if hs != nil {
		// The bundle's process spec is the workload's own: no image
		// command, and its terminal is its stdio, not a console.
	} else if st.Entrypoint {
		if len(s.image.Command) == 0 {
			return errdefs.New(errdefs.KindFailedPrecondition, errors.New("this image declares no command"))
		}
		argv = append(append([]string(nil), s.image.Command...), argv...)
	} else if s.image.Profile == "sealed" {
		return errdefs.WithReason(errdefs.KindRefused, errdefs.ReasonSealed, errors.New("refused by the image profile \"sealed\": ad-hoc exec and console are disabled; run the image's declared command instead"))
	}
	if st.Tty && !s.console && hs == nil {
		return errdefs.WithReason(errdefs.KindRefused, errdefs.ReasonPolicy, errors.New("refused by the run profile: this sandbox was admitted without console access (a terminal session); the dev and permissive run profiles allow it"))
	}
	if len(argv) == 0 {
		return errdefs.New(errdefs.KindInvalidArgument, errors.New("empty argv"))
	}
	var (
		env      []string
		bin, cwd string
		cred     *syscall.Credential
	)
	startCmd := s.reaper.start
	if hs != nil {
		// The helper applies user, limits, root and cwd, then looks the
		// command up inside the root.
		startCmd = func(c *exec.Cmd) (<-chan unix.WaitStatus, error) { return s.startBundle(c, hs) }
	} else {
		var path string
		env, path = s.buildEnv(st.Env, st.Tty)
		if bin, err = lookPath(argv[0], path); err != nil {
			return err
		}
		cwd = st.Cwd
		if cwd == "" {
			cwd = s.image.Workdir
		}
		if cwd == "" {
			cwd = "/"
		}
		if fi, err := os.Stat(cwd); err != nil || !fi.IsDir() {
			return errdefs.Errorf(errdefs.KindInvalidArgument, "working directory %s: not a directory in the guest", cwd)
		}
		cred = s.credential()
	}

	cmd := &exec.Cmd{Path: bin, Args: argv, Env: env, Dir: cwd}
	sess := &execSession{stream: stream}
	var (
		waitCh   <-chan unix.WaitStatus
		ptmx     *os.File
		stdinW   io.WriteCloser
		outDone  = make(chan struct{})
		errDone  = make(chan struct{})
		toClose  []*os.File
		readers  []*os.File
		pumps    func() // starts the output pumps, after Started is sent
		startErr error
	)
	if st.Tty {
		rows, cols := uint16(st.Rows), uint16(st.Cols)
		if rows == 0 || cols == 0 {
			rows, cols = 24, 80
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Credential: cred}
		var tty *os.File
		ptmx, tty, startErr = pty.Open()
		if startErr == nil {
			pty.Setsize(ptmx, &pty.Winsize{Rows: rows, Cols: cols})
			cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
			cmd.SysProcAttr.Ctty = 0
			if hs != nil {
				// The container's user owns its terminal, as under runc.
				tty.Chown(int(hs.UID), -1)
			}
			waitCh, startErr = startCmd(cmd)
			tty.Close()
		}
		if startErr == nil {
			stdinW = ptmx
			readers = append(readers, ptmx)
			pumps = func() { go sess.pump(ptmx, false, outDone); close(errDone) }
		}
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
		var or, ow, er, ew *os.File
		if or, ow, startErr = os.Pipe(); startErr == nil {
			if er, ew, startErr = os.Pipe(); startErr == nil {
				cmd.Stdout, cmd.Stderr = ow, ew
				toClose = append(toClose, ow, ew)
				if st.Stdin {
					var ir, iw *os.File
					if ir, iw, startErr = os.Pipe(); startErr == nil {
						cmd.Stdin = ir
						toClose = append(toClose, ir)
						stdinW = iw
					}
				}
				if startErr == nil {
					waitCh, startErr = startCmd(cmd)
				}
			}
		}
		for _, f := range toClose {
			f.Close()
		}
		if startErr == nil {
			readers = append(readers, or, er)
			pumps = func() { go sess.pump(or, false, outDone); go sess.pump(er, true, errDone) }
		} else {
			for _, f := range []*os.File{or, er} {
				if f != nil {
					f.Close()
				}
			}
			if stdinW != nil {
				stdinW.Close()
			}
		}
	}
	if startErr != nil {
		if errdefs.KindOf(startErr) != errdefs.Unknown {
			return startErr // the exec helper's report
		}
		if errors.Is(startErr, os.ErrPermission) {
			return errdefs.WithReason(errdefs.KindPermissionDenied, errdefs.ReasonCommand, fmt.Errorf("%s: permission denied", argv[0]))
		}
		return errdefs.Errorf(errdefs.KindGuest, "start %s: %v", argv[0], startErr)
	}
	pid := cmd.Process.Pid
	s.trackProcess(pid, 1)
	defer s.trackProcess(pid, -1)
	if st.Id != "" {
		s.names.Store(pid, st.Id)
		defer s.names.Delete(pid)
	}
	kill := func(sig unix.Signal) {
		if st.Tty {
			unix.Kill(pid, sig)
			return
		}
		unix.Kill(-pid, sig)
	}
	// A signal the host sends: a bundle process gets it itself (as a
	// container's process would), others with their process group.
	signal := kill
	if hs != nil {
		signal = func(sig unix.Signal) { unix.Kill(pid, sig) }
	}
	// Started goes first: no output chunk may precede it on the stream.
	if err := sess.send(&pb.ExecOutput{Msg: &pb.ExecOutput_Started{Started: &pb.Started{Pid: int32(pid)}}}); err != nil {
		kill(unix.SIGKILL)
	}
	pumps()

	// Input: stdin, signals and resizes until the client closes its side.
	inputDone := make(chan struct{})
	go func() {
		defer close(inputDone)
		stdinOpen := stdinW != nil
		defer func() {
			if stdinOpen && !st.Tty {
				stdinW.Close()
			}
		}()
		for {
			in, err := stream.Recv()
			if err != nil {
				// The client went away (or half-closed): a gone client
				// means nobody wants the process any more.
				if status.Code(err) == codes.Canceled || !errors.Is(err, io.EOF) {
					kill(unix.SIGKILL)
				}
				return
			}
			switch m := in.Msg.(type) {
			case *pb.ExecInput_Stdin:
				if stdinOpen {
					if _, err := stdinW.Write(m.Stdin); err != nil {
						stdinOpen = false
						if !st.Tty {
							stdinW.Close()
						}
					}
				}
			case *pb.ExecInput_CloseStdin:
				if stdinOpen && !st.Tty {
					stdinW.Close()
					stdinOpen = false
				} else if st.Tty {
					ptmx.Write([]byte{4}) // ^D
				}
			case *pb.ExecInput_Signal:
				if m.Signal > 0 && m.Signal < 65 {
					signal(unix.Signal(m.Signal))
				}
			case *pb.ExecInput_Resize:
				if ptmx != nil && m.Resize.Rows > 0 && m.Resize.Cols > 0 {
					pty.Setsize(ptmx, &pty.Winsize{Rows: uint16(m.Resize.Rows), Cols: uint16(m.Resize.Cols)})
				}
			}
		}
	}()

	var ws unix.WaitStatus
	select {
	case ws = <-waitCh:
	case <-stream.Context().Done():
		kill(unix.SIGKILL)
		ws = <-waitCh
	}
	if hs != nil && st.Bundle.Init {
		s.ctr.set(0, 0)
		if os.Getpid() == 1 {
			// The container's init is gone: so is every other process
			// of the guest but the agent (its PID namespace's are
			// already; not every container has one).
			unix.Kill(-1, unix.SIGKILL)
		}
	}
	grace := time.NewTimer(drainGrace)
	defer grace.Stop()
	for _, d := range []chan struct{}{outDone, errDone} {
		select {
		case <-d:
		case <-grace.C:
		}
	}
	for _, f := range readers {
		f.Close()
	}
	code, sig := exitCode(ws)
	return sess.send(&pb.ExecOutput{Msg: &pb.ExecOutput_Exit{Exit: &pb.Exit{Code: code, Signal: sig}}})
}
