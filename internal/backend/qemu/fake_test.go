package qemu

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// TestMain lets the test binary play QEMU: with MVM_FAKE_QEMU=1 it binds
// the agent channel and QMP sockets its arguments name (relative to its
// working directory, as QEMU would), says hello on the channel like the
// agent, and answers stop, cont and quit on QMP.
func TestMain(m *testing.M) {
	if os.Getenv("MVM_FAKE_QEMU") == "1" {
		fakeQEMU(os.Args[1:])
		return
	}
	os.Exit(m.Run())
}

func fakeQEMU(args []string) {
	var channel, qmpPath string
	for i := 0; i+1 < len(args); i++ {
		v := args[i+1]
		switch {
		case args[i] == "-chardev" && strings.HasPrefix(v, "socket,id=agent,path="):
			channel = strings.Split(strings.TrimPrefix(v, "socket,id=agent,path="), ",")[0]
		case args[i] == "-qmp":
			qmpPath = strings.Split(strings.TrimPrefix(v, "unix:"), ",")[0]
		}
	}
	listen := func(p string) net.Listener {
		l, err := net.Listen("unix", p)
		if err != nil {
			fmt.Fprintf(os.Stderr, "qemu-system-x86_64: -chardev %s: Failed to bind socket: %v\n", p, err)
			os.Exit(1)
		}
		return l
	}
	cl, ql := listen(channel), listen(qmpPath)
	go func() {
		for {
			c, err := cl.Accept()
			if err != nil {
				return
			}
			go func() { io.WriteString(c, "MVM-HELLO 1\n"); io.Copy(c, c); c.Close() }()
		}
	}()
	for {
		c, err := ql.Accept()
		if err != nil {
			os.Exit(1)
		}
		ok := []string{`{"return": {}}`}
		f := &fakeQMP{answers: map[string][]string{"stop": ok, "cont": ok, "quit": ok}}
		f.after = func(cmd string) {
			if cmd == "quit" {
				os.Exit(0) // QEMU exits once it has answered quit
			}
		}
		go f.serve(c)
	}
}

// TestLifecycleWithFakeQEMULongDir starts the test binary as QEMU in a
// sandbox directory whose path is longer than a socket address, dials the
// agent channel, pauses, resumes and stops it over QMP. The VMM is
// recognised by its tag.
func TestLifecycleWithFakeQEMULongDir(t *testing.T) {
	t.Setenv("MVM_QEMU", os.Args[0])
	t.Setenv("MVM_FAKE_QEMU", "1")
	dir := filepath.Join(t.TempDir(), strings.Repeat("q", 60), strings.Repeat("r", 60))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if len(filepath.Join(dir, ChannelSocket)) <= backend.MaxSocketPath {
		t.Fatal("test dir too short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	spec := backend.Spec{Name: sandbox.VMMTag("0123456789ab"), Kernel: "/k", CPUs: 1, MemoryMiB: 128, Dir: dir, Accel: "tcg"}
	m, err := Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	// Right after exec the kernel may not have set up the new command
	// line yet (/proc/PID/cmdline reads empty): poll for the tag.
	if !testenv.Poll(10*time.Second, 5*time.Millisecond, func() bool { return sandbox.ProcessAlive(m.Pid(), sandbox.VMMTag("0123456789ab")) }) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", m.Pid()))
		t.Fatalf("QEMU not recognised by its VMM tag; cmdline %q, exit %v", cmdline, m.ExitErr())
	}
	conn, err := m.DialChannel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if line != "MVM-HELLO 1\n" {
		t.Fatalf("hello %q, %v", line, err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("not done after Stop")
	}
	if err := m.ExitErr(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if m.Accel() != "tcg" || m.ConsolePath() != filepath.Join(dir, ConsoleLog) {
		t.Fatalf("accel %q console %q", m.Accel(), m.ConsolePath())
	}
}
