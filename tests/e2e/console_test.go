package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/testbin"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// tmux drives a real terminal. Each test has a tmux server of its own (a
// private socket): on the shared default server, a test whose session
// ended took the server down under another test's new-session ("server
// exited unexpectedly"), and a run of the same test elsewhere on the
// machine killed this one's session by name.
type tmux struct {
	t      *testing.T
	name   string
	socket string
}

func (m *tmux) command(args ...string) *exec.Cmd {
	return exec.Command("tmux", append([]string{"-S", m.socket}, args...)...)
}

func (m *tmux) cmd(args ...string) string {
	m.t.Helper()
	out, err := m.command(args...).CombinedOutput()
	if err != nil {
		m.t.Fatalf("tmux %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func (m *tmux) close() { m.command("kill-server").Run() }

func (m *tmux) screen() string { return m.cmd("capture-pane", "-p", "-t", m.name) }

func (m *tmux) waitFor(what string, d time.Duration) {
	m.t.Helper()
	testenv.Eventually(m.t, d, 100*time.Millisecond, func() bool { return strings.Contains(m.screen(), what) },
		func() string { return fmt.Sprintf("the terminal to show %q:\n%s", what, m.screen()) })
}

// retryUntil types keys (then Enter) until the screen shows want, for
// output that depends on something asynchronous having reached the guest.
func (m *tmux) retryUntil(keys, want string, d time.Duration) {
	m.t.Helper()
	testenv.Eventually(m.t, d, 0, func() bool {
		m.cmd("send-keys", "-t", m.name, keys, "Enter")
		return testenv.Poll(time.Second, 100*time.Millisecond, func() bool { return strings.Contains(m.screen(), want) })
	}, func() string { return fmt.Sprintf("the terminal to show %q:\n%s", want, m.screen()) })
}

// startTmux runs mvmctl ARGS in a detached tmux session; after mvmctl exits
// the session prints its exit code and whether the terminal is canonical
// again (restored), then idles.
func startTmux(t *testing.T, e *env, args ...string) *tmux {
	testenv.NeedTools(t, "tmux") // scripts/test.sh installs it
	m := &tmux{t: t, name: "mvm-e2e", socket: filepath.Join(t.TempDir(), "tmux")}
	var env []string
	for _, kv := range e.environ() {
		if strings.HasPrefix(kv, "MVM_") {
			env = append(env, "'"+kv+"'")
		}
	}
	script := "env " + strings.Join(env, " ") + " " + filepath.Join(binDir, "mvmctl") + " " + strings.Join(args, " ") +
		"; echo EXITED:$?; stty -a | grep -o -- '-\\?icanon' | sed 's/^/MODE:/'; sleep 60"
	m.cmd("new-session", "-d", "-s", m.name, "-x", "100", "-y", "30", script)
	t.Cleanup(m.close)
	return m
}

func testConsole(t *testing.T, e0 *env) {
	e := *e0
	e.t = t
	// One-shot: output and exit code.
	r := e.expect(5, "console", "rpc", "--command", "uname -s; exit 5")
	if r.stdout != "Linux\n" {
		t.Errorf("--command: %s", r)
	}
	// Without a terminal the interactive console says what to do.
	if r := e.expect(2, "console", "rpc"); !strings.Contains(r.stderr, "--command") {
		t.Errorf("no tty: %s", r)
	}

	m := startTmux(t, &e, "console", "rpc")
	m.waitFor("Ctrl-] detaches", 20*time.Second)
	m.cmd("send-keys", "-t", m.name, "echo tty=$(tty)", "Enter")
	m.waitFor("tty=/dev/pts/", 20*time.Second)
	m.cmd("send-keys", "-t", m.name, "stty size", "Enter")
	m.waitFor("30 100", 20*time.Second)
	// SIGWINCH becomes a Resize message: ask the guest for its size until
	// the new one arrives.
	m.cmd("resize-window", "-t", m.name, "-x", "120", "-y", "40")
	m.retryUntil("stty size", "40 120", 20*time.Second)
	// Ctrl-C goes to the guest (raw mode), not to mvmctl: it ends a sleep
	// that has started (its marker is on the screen) well before the 30 s.
	m.cmd("send-keys", "-t", m.name, "echo sleeping-$((1+1)); sleep 30", "Enter")
	m.waitFor("sleeping-2", 20*time.Second)
	m.cmd("send-keys", "-t", m.name, "C-c")
	m.cmd("send-keys", "-t", m.name, "echo still-$((40+2))", "Enter")
	m.waitFor("still-42", 20*time.Second)
	// Ctrl-] detaches; the terminal is restored.
	m.cmd("send-keys", "-t", m.name, "C-]")
	m.waitFor("MODE:", 20*time.Second) // printed after EXITED: and the terminal check
	s := m.screen()
	if !strings.Contains(s, "detached from rpc") || !strings.Contains(s, "EXITED:0") || !strings.Contains(s, "MODE:icanon") {
		t.Errorf("detach:\n%s", s)
	}

	// The shell exiting ends the console with its code, terminal restored.
	m2 := startTmux(t, &e, "console", "rpc")
	m2.waitFor("Ctrl-] detaches", 20*time.Second)
	m2.cmd("send-keys", "-t", m2.name, "exit 3", "Enter")
	m2.waitFor("MODE:", 20*time.Second)
	if s := m2.screen(); !strings.Contains(s, "EXITED:3") || !strings.Contains(s, "MODE:icanon") {
		t.Errorf("exit:\n%s", s)
	}
}

// TestSealedImage boots the minimal image with an agent that marks the
// image sealed (it writes {"profile":"sealed"} to /etc/mvm/image.json
// before starting, exactly where an image build puts it). The agent
// binary is built from the unchanged agent package with `go build
// -overlay`, so the refusals below come from the agent itself.
func TestSealedImage(t *testing.T) {
	dir := t.TempDir()
	main := filepath.Join(dir, "main.go")
	os.WriteFile(main, []byte(`package main

import (
	"os"

	"github.com/mvm-sandbox/mvm/internal/agent"
)

func main() {
	if os.Getpid() == 1 {
		os.MkdirAll("/etc/mvm", 0o755)
		os.WriteFile("/etc/mvm/image.json", []byte(`+"`"+`{"profile":"sealed"}`+"`"+`), 0o644)
	}
	agent.Main()
}
`), 0o644)
	overlay := filepath.Join(dir, "overlay.json")
	os.WriteFile(overlay, []byte(`{"Replace":{"`+filepath.Join(testbin.Root(), "cmd", "mvm-agent", "main.go")+`":"`+main+`"}}`), 0o644)
	agentBin := filepath.Join(dir, "mvm-agent")
	build := exec.Command("go", "build", "-overlay", overlay, "-o", agentBin, "./cmd/mvm-agent")
	build.Dir = testbin.Root()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build sealed agent: %v\n%s", err, out)
	}

	e := newEnv(t)
	e.extra = append(e.extra, "MVM_AGENT_BIN="+agentBin)
	e.must("up", "--name", "sealed", "--profile", "dev") // dev allows a console: the refusals below are the image's
	var m *tmux
	defer func() {
		if m != nil {
			m.close()
		}
		e.must("down", "sealed")
		e.assertClean()
	}()
	for _, args := range [][]string{
		{"console", "sealed", "--command", "uname -a"},
		{"exec", "sealed", "--", "true"},
		{"proc", "start", "sealed", "--", "true"},
		{"fs", "write", "sealed", "/tmp/x", "--content", "x"},
		{"fs", "mkdir", "sealed", "/tmp/d"},
		{"fs", "rm", "sealed", "/etc/mvm/image.json"},
		{"fs", "mv", "sealed", "/etc/mvm/image.json", "/tmp/i"},
		{"cp", os.Args[0], "sealed:/tmp/bin"},
	} {
		r := e.run(args...)
		if r.code != 126 || !strings.Contains(r.stderr, "sealed") {
			t.Errorf("mvmctl %v on a sealed image: want exit 126 and a refusal, got %s", args, r)
		}
	}
	// Reading stays allowed.
	if r := e.must("fs", "read", "sealed", "/etc/mvm/image.json"); !strings.Contains(r.stdout, "sealed") {
		t.Errorf("fs read: %s", r)
	}
	e.must("fs", "ls", "sealed", "/etc")
	e.must("cp", "sealed:/etc/mvm", filepath.Join(t.TempDir(), "mvm"))
	// The interactive console is refused too, and the terminal restored.
	m = startTmux(t, e, "console", "sealed")
	m.waitFor("EXITED:", 30*time.Second)
	if s := m.screen(); !strings.Contains(s, "EXITED:126") || !strings.Contains(s, "MODE:icanon") || !strings.Contains(s, "sealed") {
		t.Errorf("interactive console on sealed:\n%s", s)
	}
}
