package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestGuestRPC boots one sandbox and runs the file, copy, process,
// console and stats checks against it (one boot for all of them). The
// minimal image's root is a tmpfs in guest RAM (half of it), so the 1 GiB
// round trip (skipped with -short) boots with --memory 3G.
func TestGuestRPC(t *testing.T) {
	e := newEnv(t)
	mem := "1G"
	if !testing.Short() {
		mem = "3G"
	}
	r := e.run("up", "--name", "rpc", "--memory", mem, "--profile", "dev") // dev: the console checks need one
	if r.code != 0 {
		t.Fatalf("up: %s", r)
	}
	defer func() {
		e.must("down", "rpc")
		e.assertClean()
	}()
	t.Run("fs", func(t *testing.T) { testFs(t, e) })
	t.Run("copy-sizes", func(t *testing.T) { testCopySizes(t, e) })
	t.Run("copy-trees", func(t *testing.T) { testCopyTrees(t, e) })
	t.Run("traversal", func(t *testing.T) { testTraversal(t, e) })
	t.Run("proc", func(t *testing.T) { testProc(t, e) })
	t.Run("console", func(t *testing.T) { testConsole(t, e) })
	t.Run("stats", func(t *testing.T) { testStats(t, e) })
	t.Run("audit", func(t *testing.T) {
		// Every operation above left evidence, and the chain verifies.
		for _, kind := range []string{"file.copied", "file.changed", "console.opened", "console.closed", "exec.signaled"} {
			if n := countKind(t, e, kind); n == 0 {
				t.Errorf("no %s entry in the audit chain", kind)
			}
		}
		if !strings.Contains(e.must("audit", "tail", "-n", "1000", "--json").stdout, `"background":true`) {
			t.Errorf("background process starts are not audited")
		}
		e.must("audit", "verify")
	})
	t.Run("copy-1GiB", func(t *testing.T) {
		if testing.Short() {
			t.Skip("1 GiB round trip skipped with -short")
		}
		testCopyHuge(t, e)
	})
}

// expect runs mvmctl and checks its exit code.
func (e *env) expect(code int, args ...string) result {
	e.t.Helper()
	r := e.run(args...)
	if r.code != code {
		e.t.Errorf("mvmctl %s: want exit %d, got %s", strings.Join(args, " "), code, r)
	}
	return r
}

func testFs(t *testing.T, e0 *env) {
	e := *e0
	e.t = t
	e.must("fs", "write", "rpc", "/tmp/run.sh", "--mode", "0755", "--content", "#!/bin/sh\necho ran $1\n")
	if r := e.must("exec", "rpc", "--", "/tmp/run.sh", "ok"); r.stdout != "ran ok\n" {
		t.Errorf("written script: %s", r)
	}
	var st map[string]any
	json.Unmarshal([]byte(e.must("fs", "stat", "rpc", "/tmp/run.sh", "--json").stdout), &st)
	if st["mode"] != "0755" || st["type"] != "file" || st["size"] != float64(22) {
		t.Errorf("stat: %v", st)
	}
	if r := e.must("fs", "read", "rpc", "/tmp/run.sh"); r.stdout != "#!/bin/sh\necho ran $1\n" {
		t.Errorf("read: %q", r.stdout)
	}
	// stdin is the default source; --append and --no-clobber.
	if r := e.runIn(strings.NewReader("one\n"), "fs", "write", "rpc", "/tmp/s.txt"); r.code != 0 {
		t.Fatalf("write from stdin: %s", r)
	}
	e.must("fs", "write", "rpc", "/tmp/s.txt", "--append", "--content", "two\n")
	if r := e.must("fs", "read", "rpc", "/tmp/s.txt"); r.stdout != "one\ntwo\n" {
		t.Errorf("append: %q", r.stdout)
	}
	e.expect(6, "fs", "write", "rpc", "/tmp/s.txt", "-n", "--content", "x")
	e.must("fs", "mkdir", "rpc", "/tmp/d/e/f", "-p", "--mode", "0700")
	json.Unmarshal([]byte(e.must("fs", "stat", "rpc", "/tmp/d/e/f", "--json").stdout), &st)
	if st["mode"] != "0700" || st["type"] != "dir" {
		t.Errorf("mkdir mode: %v", st)
	}
	e.expect(6, "fs", "mkdir", "rpc", "/tmp/d")
	e.expect(4, "fs", "mkdir", "rpc", "/tmp/no/such")
	e.must("fs", "mv", "rpc", "/tmp/s.txt", "/tmp/d")
	var ls struct {
		Entries []map[string]any `json:"entries"`
	}
	json.Unmarshal([]byte(e.must("fs", "ls", "rpc", "/tmp/d", "--json").stdout), &ls)
	names := []string{}
	for _, en := range ls.Entries {
		names = append(names, en["name"].(string))
	}
	if strings.Join(names, ",") != "e,s.txt" {
		t.Errorf("ls: %v", names)
	}
	if r := e.must("fs", "ls", "rpc", "/tmp/d"); !strings.Contains(r.stdout, "s.txt") {
		t.Errorf("ls human: %s", r)
	}
	// Typed errors, distinct exit codes, messages that say what to do.
	r := e.expect(4, "fs", "read", "rpc", "/tmp/missing")
	if !strings.Contains(r.stderr, "no such file") || !strings.Contains(r.stderr, "fs ls") {
		t.Errorf("not found message: %s", r.stderr)
	}
	e.expect(7, "fs", "rm", "rpc", "/tmp/d")
	e.expect(7, "fs", "read", "rpc", "/tmp/d")
	e.expect(7, "fs", "ls", "rpc", "/tmp/run.sh")
	e.expect(2, "fs", "read", "rpc", "relative/path")
	e.expect(2, "fs", "write", "rpc", "/tmp/x", "--mode", "999", "--content", "x")
	e.expect(3, "fs", "read", "nosuchsandbox", "/etc/hostname")
	e.must("fs", "rm", "-r", "rpc", "/tmp/d")
	e.expect(4, "fs", "stat", "rpc", "/tmp/d")
	e.must("fs", "rm", "-f", "rpc", "/tmp/d")
	// A guest name with control characters is quoted, not sent raw.
	e.must("exec", "rpc", "--", "sh", "-c", `touch "/tmp/$(printf 'evil\033[2J')"`)
	if r := e.must("fs", "ls", "rpc", "/tmp"); strings.Contains(r.stdout, "\033") {
		t.Errorf("escape sequence reached the terminal: %q", r.stdout)
	}
}

func randomFile(t *testing.T, path string, n int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, n); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

func testCopySizes(t *testing.T, e0 *env) {
	e := *e0
	e.t = t
	dir := t.TempDir()
	for _, n := range []int64{0, 1, 64<<10 + 1} {
		src := filepath.Join(dir, fmt.Sprintf("in-%d", n))
		sum := randomFile(t, src, n)
		guest := fmt.Sprintf("/tmp/size-%d", n)
		e.must("cp", src, "rpc:"+guest)
		back := filepath.Join(dir, fmt.Sprintf("out-%d", n))
		e.must("cp", "rpc:"+guest, back)
		if got := fileSum(t, back); got != sum {
			t.Errorf("%d bytes: cp round trip differs", n)
		}
		// fs read/write take the same bytes.
		viaRead := filepath.Join(dir, fmt.Sprintf("read-%d", n))
		f, _ := os.Create(viaRead)
		cmd := e.command(context.Background(), "fs", "read", "rpc", guest)
		cmd.Stdout = f
		if err := cmd.Run(); err != nil {
			t.Fatalf("fs read: %v", err)
		}
		f.Close()
		if fileSum(t, viaRead) != sum {
			t.Errorf("%d bytes: fs read differs", n)
		}
		in, _ := os.Open(src)
		if r := e.runIn(in, "fs", "write", "rpc", guest+".w"); r.code != 0 {
			t.Fatalf("fs write: %s", r)
		}
		in.Close()
		var st map[string]any
		json.Unmarshal([]byte(e.must("fs", "stat", "rpc", guest+".w", "--json").stdout), &st)
		if st["size"] != float64(n) {
			t.Errorf("%d bytes: fs write stored %v", n, st["size"])
		}
	}
}

func testCopyTrees(t *testing.T, e0 *env) {
	e := *e0
	e.t = t
	src := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(src, "bin"), 0o755)
	os.MkdirAll(filepath.Join(src, "private", "deep"), 0o700)
	os.WriteFile(filepath.Join(src, "bin", "tool"), []byte("#!/bin/sh\necho tool\n"), 0o755)
	os.WriteFile(filepath.Join(src, "private", "deep", "key"), []byte("secret"), 0o600)
	os.WriteFile(filepath.Join(src, "empty"), nil, 0o644)
	os.Symlink("bin/tool", filepath.Join(src, "link"))
	os.Symlink("../../bin", filepath.Join(src, "private", "deep", "up"))
	// Into an existing directory: lands as /tmp/trees/tree.
	e.must("fs", "mkdir", "rpc", "/tmp/trees")
	e.must("cp", src, "rpc:/tmp/trees")
	if r := e.must("exec", "rpc", "--", "/tmp/trees/tree/link"); r.stdout != "tool\n" {
		t.Errorf("symlinked tool: %s", r)
	}
	r := e.must("exec", "rpc", "--", "sh", "-c", "stat -c '%a %n' /tmp/trees/tree/private /tmp/trees/tree/private/deep/key; readlink /tmp/trees/tree/private/deep/up")
	if r.stdout != "700 /tmp/trees/tree/private\n600 /tmp/trees/tree/private/deep/key\n../../bin\n" {
		t.Errorf("modes in guest: %q", r.stdout)
	}
	// Out, as a new name, then compare both trees on the host.
	out := filepath.Join(t.TempDir(), "back")
	e.must("cp", "rpc:/tmp/trees/tree", out)
	for _, c := range []struct {
		p    string
		mode os.FileMode
	}{{"bin/tool", 0o755}, {"private", os.ModeDir | 0o700}, {"private/deep/key", 0o600}, {"empty", 0o644}, {"link", os.ModeSymlink | 0o777}} {
		fi, err := os.Lstat(filepath.Join(out, c.p))
		if err != nil || fi.Mode() != c.mode {
			t.Errorf("%s: mode %v (%v), want %v", c.p, fi.Mode(), err, c.mode)
		}
	}
	if l, _ := os.Readlink(filepath.Join(out, "private", "deep", "up")); l != "../../bin" {
		t.Errorf("symlink: %q", l)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "private", "deep", "key")); string(b) != "secret" {
		t.Errorf("content: %q", b)
	}
	var res map[string]any
	json.Unmarshal([]byte(e.must("cp", "--json", "rpc:/tmp/trees/tree", filepath.Join(t.TempDir(), "j")).stdout), &res)
	if res["files"] != float64(3) || res["symlinks"] != float64(2) || res["dirs"] != float64(4) {
		t.Errorf("cp --json: %v", res)
	}
	e.expect(2, "cp", src, filepath.Join(t.TempDir(), "x"))
	e.expect(2, "cp", "rpc:/a", "rpc:/b")
	e.expect(2, "cp", src, "rpc:relative")
	e.expect(4, "cp", "rpc:/tmp/nope", filepath.Join(t.TempDir(), "x"))
	e.expect(4, "cp", filepath.Join(t.TempDir(), "nope"), "rpc:/tmp/x")
	e.expect(4, "cp", src, "rpc:/tmp/no/such/dir")
}

func testTraversal(t *testing.T, e0 *env) {
	e := *e0
	e.t = t
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	os.Mkdir(outside, 0o755)
	dst := filepath.Join(base, "dst")
	os.Mkdir(dst, 0o755)
	// Guest trees whose symlinks leave the tree are copied with their
	// symlinks as symlinks, never followed: nothing lands outside dst.
	rel := "../../../../" + strings.TrimPrefix(outside, "/")
	e.must("exec", "rpc", "--", "sh", "-c", `mkdir -p /tmp/evil/d && echo x > /tmp/evil/d/f &&
		ln -s /etc /tmp/evil/abs && mkdir -p /tmp/evil2 && ln -s `+rel+` /tmp/evil2/rel &&
		mkdir -p /tmp/evil3 && ln -s . /tmp/evil3/self && ln -s self/.. /tmp/evil3/climb`)
	for src, link := range map[string]string{"/tmp/evil/abs": "/etc", "/tmp/evil2/rel": rel, "/tmp/evil3/climb": "self/.."} {
		e.must("cp", "rpc:"+filepath.Dir(src), dst)
		if got, _ := os.Readlink(filepath.Join(dst, strings.TrimPrefix(src, "/tmp/"))); got != link {
			t.Errorf("%s: copied as a link to %q, want %q", src, got, link)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("written outside: %v", ents)
	}
	// setuid bits from the guest are dropped on the host.
	e.must("exec", "rpc", "--", "sh", "-c", "echo s > /tmp/suid && chmod 4755 /tmp/suid")
	e.must("cp", "rpc:/tmp/suid", dst)
	if fi, _ := os.Stat(filepath.Join(dst, "suid")); fi == nil || fi.Mode()&os.ModeSetuid != 0 {
		t.Errorf("setuid kept on the host: %v", fi)
	}
	// Host -> guest: paths are validated before anything is sent.
	e.expect(2, "fs", "write", "rpc", "tmp/../../x", "--content", "x")
	e.expect(2, "cp", dst, "rpc:../etc")
	// ".." in an absolute guest path is cleaned, not a way out of anything.
	e.must("fs", "write", "rpc", "/tmp/../tmp/./dotdot", "--content", "x")
	e.must("fs", "stat", "rpc", "/tmp/dotdot")
}

func testCopyHuge(t *testing.T, e0 *env) {
	e := *e0
	e.t = t
	const size = 1 << 30
	dir := t.TempDir()
	src := filepath.Join(dir, "big")
	sum := randomFile(t, src, size)
	sup := supervisorPID(e0)
	for _, step := range []struct{ args []string }{
		{[]string{"cp", src, "rpc:/tmp/big"}},
		{[]string{"cp", "rpc:/tmp/big", filepath.Join(dir, "big.out")}},
	} {
		t0 := time.Now()
		peak, r := runSampled(t, e0, step.args...)
		if r != nil {
			t.Fatalf("mvmctl %v: %v", step.args, r)
		}
		d := time.Since(t0)
		t.Logf("%s: %.1f MB/s, mvmctl peak RSS %d MiB", strings.Join(step.args[:2], " "), size/1e6/d.Seconds(), peak>>20)
		if peak > 200<<20 {
			t.Errorf("mvmctl held %d MiB during a 1 GiB copy", peak>>20)
		}
	}
	if got := fileSum(t, filepath.Join(dir, "big.out")); got != sum {
		t.Errorf("1 GiB round trip: checksum differs")
	}
	supHWM := procKB(sup, "VmHWM") << 10
	agent := e.must("fs", "read", "rpc", "/proc/1/status").stdout
	agentHWM := int64(0)
	for _, l := range strings.Split(agent, "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			agentHWM, _ = strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			agentHWM <<= 10
		}
	}
	t.Logf("peak RSS over the sandbox's life: supervisor %d MiB, agent %d MiB", supHWM>>20, agentHWM>>20)
	if supHWM > 200<<20 || agentHWM > 200<<20 {
		t.Errorf("a side held the file in memory: supervisor %d MiB, agent %d MiB", supHWM>>20, agentHWM>>20)
	}
	e.must("fs", "rm", "rpc", "/tmp/big")
}

// supervisorPID finds the test's supervisor process.
func supervisorPID(e *env) int {
	for _, p := range e.processes() {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if bytes.Contains(b, []byte("__supervise")) {
			return p
		}
	}
	return 0
}

// procKB reads a "Vm...: N kB" field of a process.
func procKB(pid int, field string) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			n, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return n
		}
	}
	return 0
}

// runSampled runs mvmctl while sampling its RSS; it returns the peak.
func runSampled(t *testing.T, e *env, args ...string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := e.command(ctx, args...)
	var se bytes.Buffer
	cmd.Stderr = &se
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var peak int64
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return peak, fmt.Errorf("%v: %s", err, se.String())
			}
			return peak, nil
		case <-tick.C:
			if hwm := procKB(cmd.Process.Pid, "VmHWM") << 10; hwm > peak {
				peak = hwm
			}
		}
	}
}

func testStats(t *testing.T, e0 *env) {
	e := *e0
	e.t = t
	var st map[string]any
	if err := json.Unmarshal([]byte(e.must("stats", "rpc", "--json").stdout), &st); err != nil {
		t.Fatal(err)
	}
	if st["mem_total_bytes"].(float64) < 500<<20 || st["processes"].(float64) < 1 {
		t.Errorf("stats: %v", st)
	}
	if r := e.must("stats", "rpc"); !strings.Contains(r.stdout, "memory:") {
		t.Errorf("stats: %s", r)
	}
	e.expect(3, "stats", "nosuch")
}
