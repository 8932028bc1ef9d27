// Package e2e drives the real mvmctl binary against real microVMs (QEMU,
// KVM or TCG). Nothing on this path is mocked.
//
// Each test gets its own MVM_STATE_DIR and MVM_DATA_DIR; the cache (kernel,
// images) is shared and must have been prepared by `mvmctl setup`.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/testbin"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

var binDir string

func TestMain(m *testing.M) { testbin.Main(m, &binDir) }

// env is one test's private mvm installation state.
type env struct {
	t     *testing.T
	state string
	data  string
	extra []string
	// transcript, when set (recordOutput), receives everything mvmctl
	// prints, for assertNotLeaked.
	transcript *bytes.Buffer
}

// newEnv gives the test fresh state and data directories and, when the
// test ends, checks that no supervisor or VMM of this test is left running
// and that no sandbox state remains unless keepState was asked.
func newEnv(t *testing.T) *env {
	t.Helper()
	base := t.TempDir()
	e := &env{t: t, state: filepath.Join(base, "state"), data: filepath.Join(base, "data")}
	t.Cleanup(func() {
		// Leave nothing running, whatever the test did.
		procs := e.processes()
		if len(procs) > 0 {
			e.run("down", "--all")
			testenv.Poll(10*time.Second, 50*time.Millisecond, func() bool { return len(e.processes()) == 0 })
			t.Errorf("processes left running after the test: %v", procs)
			for _, p := range e.processes() {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
	return e
}

// processes lists pids whose command line or working directory lies in
// this test's state directory (supervisors and VMMs).
func (e *env) processes() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		var pid int
		if _, err := fmt.Sscanf(ent.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		cwd, _ := os.Readlink(filepath.Join("/proc", ent.Name(), "cwd"))
		stat, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue
		}
		if bytes.Contains(cmdline, []byte(e.state)) || strings.HasPrefix(cwd, e.state) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func (e *env) environ() []string {
	out := []string{"MVM_STATE_DIR=" + e.state, "MVM_DATA_DIR=" + e.data}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MVM_STATE_DIR=") && !strings.HasPrefix(kv, "MVM_DATA_DIR=") {
			out = append(out, kv)
		}
	}
	return append(out, e.extra...)
}

// result is one finished mvmctl invocation.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %q\nstderr: %q", r.code, trunc(r.stdout), trunc(r.stderr))
}

func trunc(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "..."
	}
	return s
}

// command prepares mvmctl args without running it.
func (e *env) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "mvmctl"), args...)
	cmd.Env = e.environ()
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs mvmctl with args and no stdin; every run has a deadline.
func (e *env) run(args ...string) result { return e.runIn(nil, args...) }

func (e *env) runIn(stdin io.Reader, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := e.command(ctx, args...)
	var so, se bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &so, &se
	return e.finish(cmd.Run(), args, &so, &se)
}

// finish turns a finished mvmctl into a result, and records its output
// in the transcript when one is kept.
func (e *env) finish(err error, args []string, so, se *bytes.Buffer) result {
	e.t.Helper()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("mvmctl %v: %v", args, err)
	}
	if e.transcript != nil {
		e.transcript.Write(so.Bytes())
		e.transcript.Write(se.Bytes())
	}
	return result{stdout: so.String(), stderr: se.String(), code: code}
}

// recordOutput keeps everything mvmctl prints from now on (also through
// copies of e) for assertNotLeaked.
func (e *env) recordOutput() { e.transcript = &bytes.Buffer{} }

// assertNotLeaked fails the test if value appears in anything mvmctl
// printed since recordOutput, in any of files, or in any file under the
// state, data and cache directories (the cache is shared: every image
// and kernel in it is searched too).
func (e *env) assertNotLeaked(value string, files ...string) {
	e.t.Helper()
	v := []byte(value)
	if e.transcript == nil || e.transcript.Len() == 0 {
		e.t.Fatal("assertNotLeaked: no output was recorded (call recordOutput first)")
	}
	if bytes.Contains(e.transcript.Bytes(), v) {
		e.t.Errorf("the secret's value appeared in mvmctl's output")
	}
	for _, f := range files {
		if b, err := os.ReadFile(f); err != nil || len(b) == 0 || bytes.Contains(b, v) {
			e.t.Errorf("%s is missing (%v) or holds the value", f, err)
		}
	}
	scanned := 0
	for _, root := range []string{e.state, e.data, cacheDir()} {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			scanned++
			if found, err := fileContains(p, v); err == nil && found {
				e.t.Errorf("the secret's value is in %s", p)
			}
			return nil
		})
	}
	if scanned < 5 {
		e.t.Errorf("scanned only %d files", scanned)
	}
}

// cacheDir is the cache the tests share (MVM_CACHE_DIR, else
// ~/.cache/mvm).
func cacheDir() string {
	if c := os.Getenv("MVM_CACHE_DIR"); c != "" {
		return c
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "mvm")
}

// fileContains reports whether the file at p holds v, reading it in
// blocks (root filesystem images are large).
func fileContains(p string, v []byte) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20+len(v))
	keep := 0
	for {
		n, err := f.Read(buf[keep:])
		if bytes.Contains(buf[:keep+n], v) {
			return true, nil
		}
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		// keep the tail that could begin a match across blocks
		tail := keep + n
		if k := len(v) - 1; tail > k {
			copy(buf, buf[tail-k:tail])
			keep = k
		} else {
			keep = tail
		}
	}
}

// must runs mvmctl and fails the test unless it exits 0.
func (e *env) must(args ...string) result {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("mvmctl %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// sandboxDirs lists what is left under the state directory's sandboxes.
func (e *env) sandboxDirs() []string {
	ents, _ := os.ReadDir(filepath.Join(e.state, "sb"))
	var names []string
	for _, ent := range ents {
		names = append(names, ent.Name())
	}
	return names
}

// assertClean checks that no sandbox state and no process remain.
func (e *env) assertClean() {
	e.t.Helper()
	if d := e.sandboxDirs(); len(d) > 0 {
		e.t.Errorf("sandbox state left behind: %v", d)
	}
	if p := e.processes(); len(p) > 0 {
		e.t.Errorf("processes left behind: %v", p)
	}
	names, _ := os.ReadDir(filepath.Join(e.state, "names"))
	if len(names) > 0 {
		e.t.Errorf("name reservations left behind: %d", len(names))
	}
}

// waitFor polls cond every 50 ms until it holds (testenv.Eventually).
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, d, 50*time.Millisecond, cond, testenv.Msg("%s", what))
}

// runAt runs mvmctl in working directory dir.
func (e *env) runAt(dir string, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := e.command(ctx, args...)
	cmd.Dir = dir
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	return e.finish(cmd.Run(), args, &so, &se)
}

// sandboxes returns `mvmctl ls -a --json`.
func (e *env) sandboxes() []map[string]any {
	e.t.Helper()
	r := e.must("ls", "-a", "--json")
	var rows []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		e.t.Fatalf("ls --json: %v: %s", err, r)
	}
	return rows
}

// stateOf reads a sandbox's state.json by name.
func (e *env) stateOf(name string) map[string]any {
	e.t.Helper()
	link, err := os.Readlink(filepath.Join(e.state, "names", name))
	if err != nil {
		e.t.Fatalf("no sandbox %s: %v", name, err)
	}
	b, err := os.ReadFile(filepath.Join(e.state, "sb", filepath.Base(link), "state.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		e.t.Fatal(err)
	}
	return st
}
