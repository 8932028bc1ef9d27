package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// upSmall boots a sandbox of the minimal template with a writable disk
// (a rootfs image, not the initramfs alone) and 256 MiB.
func (e *env) upSmall(name string, extra ...string) {
	e.t.Helper()
	dir := filepath.Join(e.t.TempDir(), "img")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("template = \"minimal\"\n"), 0o644)
	e.must(append([]string{"up", dir, "--name", name, "--memory", "256M"}, extra...)...)
}

// TestSnapshotClones: a file written in the guest is in a snapshot taken
// while the sandbox runs (memory and disk at one instant); two clones
// started from it both read it back; a write in one clone is seen neither
// in the other nor in the source; the source keeps running; removing the
// snapshot leaves the clones running.
func TestSnapshotClones(t *testing.T) {
	e := newEnv(t)
	e.upSmall("src")
	// The file stays in the guest's page cache: the snapshot must hold
	// memory and disk consistently for the clones to read it.
	e.must("exec", "src", "--", "sh", "-c", "echo from-source > /data.txt")
	r := e.must("snapshot", "save", "src", "t1", "--json")
	var saved map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &saved); err != nil || saved["tag"] != "t1" || saved["memory_mib"] != 256.0 || saved["holds_secrets"] != false {
		t.Fatalf("save --json: %v %s", err, r.stdout)
	}
	dir := filepath.Join(e.data, "snapshots", "t1")
	ents, _ := os.ReadDir(dir)
	if len(ents) < 5 {
		t.Fatalf("snapshot files: %v", ents)
	}
	for _, ent := range ents {
		if fi, _ := ent.Info(); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", ent.Name(), fi.Mode())
		}
	}
	if r := e.run("snapshot", "save", "src", "t1"); r.code != 6 || !strings.Contains(r.stderr, "exists") {
		t.Fatalf("second save under one tag: %s", r)
	}
	e.must("up", "--from-snapshot", "t1", "--name", "c1")
	e.must("up", "--from-snapshot", "t1", "--name", "c2")
	for _, n := range []string{"src", "c1", "c2"} {
		if r := e.must("exec", n, "--", "cat", "/data.txt"); r.stdout != "from-source\n" {
			t.Fatalf("%s reads %q", n, r.stdout)
		}
	}
	e.must("exec", "c1", "--", "sh", "-c", "echo c1 > /only-c1 && sync")
	for _, n := range []string{"src", "c2"} {
		if r := e.run("exec", n, "--", "cat", "/only-c1"); r.code == 0 {
			t.Fatalf("%s sees c1's write: %s", n, r)
		}
	}
	var ls struct {
		Snapshots []map[string]any `json:"snapshots"`
	}
	r = e.must("snapshot", "ls", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &ls); err != nil || len(ls.Snapshots) != 1 || ls.Snapshots[0]["source"] != "src" {
		t.Fatalf("snapshot ls: %v %s", err, r.stdout)
	}
	r = e.must("boot-report", "c1", "--json")
	if !strings.Contains(r.stdout, `"start":"restored"`) && !strings.Contains(r.stdout, `"start": "restored"`) {
		t.Fatalf("boot-report of a clone: %s", r.stdout)
	}
	e.must("snapshot", "rm", "t1")
	if r := e.must("exec", "c2", "--", "cat", "/data.txt"); r.stdout != "from-source\n" {
		t.Fatalf("clone after snapshot rm: %q", r.stdout)
	}
	if r := e.run("up", "--from-snapshot", "t1", "--name", "c3"); r.code != 3 || !strings.Contains(r.stderr, "snapshot ls") {
		t.Fatalf("restore of a removed snapshot: %s", r)
	}
	// save, restore and removal are in the audit chain, which verifies
	e.must("audit", "verify")
	chain, _ := os.ReadFile(filepath.Join(e.data, "audit", "chain.jsonl"))
	for _, kind := range []string{`"kind":"snapshot.saved"`, `"kind":"snapshot.restored"`, `"kind":"snapshot.removed"`, `"kind":"sandbox.identity_refreshed"`} {
		if !strings.Contains(string(chain), kind) {
			t.Errorf("audit chain lacks %s", kind)
		}
	}
	e.must("down", "--all")
	e.assertClean()
}

// TestSnapshotTamperedRefused: a snapshot whose memory file has one byte
// flipped, or is truncated, is refused before anything is created, with
// an error that says what to do (exit 126); nothing is left behind. An
// intact snapshot's plan is admitted again for a clone: saved under the
// permissive profile with its acknowledgement, it is refused without.
func TestSnapshotTamperedRefused(t *testing.T) {
	e := newEnv(t)
	e.extra = []string{"MVM_ACK_PERMISSIVE_RUN=1"}
	if r := e.runIn(strings.NewReader("s3cr3t-value"), "secret", "set", "tok"); r.code != 0 {
		t.Fatalf("secret set: %s", r)
	}
	e.upSmall("src", "--profile", "permissive", "--secret", "tok:TOKEN")
	e.must("snapshot", "save", "src", "flipped")
	e.must("snapshot", "save", "src", "short")
	e.must("snapshot", "save", "src", "intact")
	// ls says which secrets a snapshot may hold in its memory
	r := e.must("snapshot", "ls", "--json")
	if !strings.Contains(r.stdout, `"holds_secrets":true`) || !strings.Contains(r.stdout, `"secrets":["tok"]`) || strings.Contains(r.stdout, "s3cr3t") {
		t.Fatalf("snapshot ls --json: %s", r.stdout)
	}
	e.must("down", "src")
	e.extra = nil
	if r := e.run("up", "--from-snapshot", "intact", "--name", "c"); r.code != 126 || !strings.Contains(r.stderr, "MVM_ACK_PERMISSIVE_RUN") {
		t.Fatalf("a permissive snapshot restored without the acknowledgement: %s", r)
	}
	mem := filepath.Join(e.data, "snapshots", "flipped", "memory.state")
	f, err := os.OpenFile(mem, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, 1<<20)
	b[0] ^= 0xff
	f.WriteAt(b, 1<<20)
	f.Close()
	r = e.run("up", "--from-snapshot", "flipped", "--name", "c")
	if r.code != 126 || !strings.Contains(r.stderr, "memory.state does not match") || !strings.Contains(r.stderr, "snapshot rm") {
		t.Fatalf("tampered snapshot: %s", r)
	}
	os.Truncate(filepath.Join(e.data, "snapshots", "short", "memory.state"), 4096)
	r = e.run("up", "--from-snapshot", "short", "--name", "c", "--json")
	if r.code != 126 || !strings.Contains(r.stdout, `"reason":"integrity"`) || !strings.Contains(r.stdout, "truncated") {
		t.Fatalf("truncated snapshot: %s", r)
	}
	e.assertClean()
}

// row is the `ls -a --json` object of one sandbox (nil when it is gone).
func (e *env) row(name string) map[string]any {
	e.t.Helper()
	for _, r := range e.sandboxes() {
		if r["name"] == name {
			return r
		}
	}
	return nil
}

// guestInt reads an integer the guest keeps in a file.
func (e *env) guestInt(name, path string) int {
	e.t.Helper()
	r := e.must("exec", name, "--", "cat", path)
	n, err := strconv.Atoi(strings.TrimSpace(r.stdout))
	if err != nil {
		e.t.Fatalf("%s in %s: %q", path, name, r.stdout)
	}
	return n
}

// TestPauseToDisk: pause saves the sandbox and ends its VMM and supervisor
// (nothing of it runs; ls shows paused, the TTL waits); resume restores it
// in place: a counting process counts on from where it was, a file it
// holds open stays open, background process handles are still there.
// `pause --in-memory` is the freeze that keeps the VMM.
func TestPauseToDisk(t *testing.T) {
	e := newEnv(t)
	e.upSmall("pz", "--ttl", "1h")
	e.must("proc", "start", "pz", "--", "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done")
	e.must("proc", "start", "pz", "--", "sh", "-c", "exec 7>/tmp/open.txt; echo one >&7; while sleep 0.1; do if [ -e /tmp/go ]; then echo two >&7; rm /tmp/go; fi; done")
	waitFor(t, "the guest to count", time.Minute, func() bool {
		r := e.run("exec", "pz", "--", "cat", "/tmp/count")
		n, _ := strconv.Atoi(strings.TrimSpace(r.stdout))
		return n >= 3
	})
	before := e.guestInt("pz", "/tmp/count")
	if r := e.must("pause", "pz"); r.stdout != "pz paused (to disk)\n" {
		t.Fatalf("pause: %s", r)
	}
	if p := e.processes(); len(p) != 0 {
		t.Fatalf("a sandbox paused to disk still has processes: %v", p)
	}
	row := e.row("pz")
	if row["state"] != "paused" || row["paused_to"] != "disk" || row["expires"] != nil {
		t.Fatalf("ls after pause: %v", row)
	}
	if r := e.run("exec", "pz", "--", "true"); r.code != 125 || !strings.Contains(r.stderr, "paused") {
		t.Fatalf("exec while paused to disk: %s", r)
	}
	if r := e.run("snapshot", "save", "pz", "t"); r.code != 125 {
		t.Fatalf("snapshot of a sandbox paused to disk: %s", r)
	}
	e.must("resume", "pz")
	chain, _ := os.ReadFile(filepath.Join(e.data, "audit", "chain.jsonl"))
	if !strings.Contains(string(chain), `"kind":"sandbox.paused"`) || !strings.Contains(string(chain), `"kind":"sandbox.resumed"`) {
		t.Errorf("pause and resume are not in the audit chain")
	}
	after := e.guestInt("pz", "/tmp/count")
	if after < before || after > before+20 {
		t.Fatalf("the count was %d at pause and %d after resume: not continued", before, after)
	}
	waitFor(t, "the guest to count on", time.Minute, func() bool { return e.guestInt("pz", "/tmp/count") > after })
	e.must("exec", "pz", "--", "touch", "/tmp/go")
	waitFor(t, "the open file to take a write", time.Minute, func() bool {
		return e.must("exec", "pz", "--", "cat", "/tmp/open.txt").stdout == "one\ntwo\n"
	})
	if r := e.must("proc", "ls", "pz"); strings.Count(r.stdout, "running") != 2 {
		t.Fatalf("background processes after resume: %s", r.stdout)
	}
	if row := e.row("pz"); row["state"] != "running" || row["expires"] == nil {
		t.Fatalf("ls after resume: %v", row)
	}
	e.must("pause", "--in-memory", "pz")
	if row := e.row("pz"); row["state"] != "paused" || row["paused_to"] != nil || len(e.processes()) == 0 {
		t.Fatalf("pause --in-memory: %v", row)
	}
	e.must("resume", "pz")
	e.must("exec", "pz", "--", "true")
	e.must("down", "pz")
	e.assertClean()
}

// withKillAt runs f with the supervisors it starts told to SIGKILL
// themselves at point (supervisor.KillAtEnv): a kill at an exact instant.
func (e *env) withKillAt(point string, f func()) {
	e.t.Helper()
	saved := e.extra
	e.extra = append(append([]string(nil), e.extra...), "MVM_TEST_SUPERVISOR_KILL_AT="+point)
	defer func() { e.extra = saved }()
	f()
}

// statePID reads the supervisor pid a sandbox's state file records.
func statePID(dir string) int {
	b, _ := os.ReadFile(filepath.Join(dir, "state.json"))
	var st struct {
		PID int `json:"supervisor_pid"`
	}
	json.Unmarshal(b, &st)
	return st.PID
}

// leftovers lists the temporary directories of saves and removals in dir.
func leftovers(dir string) []string {
	var out []string
	for _, p := range []string{".tmp-*", ".rm-*", ".resumed-*"} {
		m, _ := filepath.Glob(filepath.Join(dir, p))
		out = append(out, m...)
	}
	return out
}

// TestSnapshotPauseFaults: SIGKILL of the CLI or the supervisor during
// pause, resume, snapshot save and clone leaves each sandbox in its old
// state or its new one, never half, and `ls` says which. The supervisor is
// killed from outside at the first moment it can be seen, and by itself
// at exact points (supervisor.KillAtEnv):
//   - pause, CLI killed: the supervisor completes it (paused);
//   - resume, supervisor killed as soon as it runs, or once the guest has
//     run on (and written to its disk) but before the resume commits:
//     still paused, its saved state intact (the next resume verifies it),
//     and resume works;
//   - pause, supervisor killed after the state is committed: paused, and
//     resume works;
//   - clone, CLI killed: the clone runs;
//   - snapshot save, supervisor killed before commit: no snapshot, no
//     temporary directory; the sandbox is failed (its VM dies with its
//     supervisor), `down` cleans it;
//   - pause, supervisor killed before commit: failed, `ls` says it died
//     pausing, nothing half-written remains; `down` cleans it.
func TestSnapshotPauseFaults(t *testing.T) {
	e := newEnv(t)
	e.upSmall("k")
	dir := filepath.Join(e.state, "sb", e.row("k")["id"].(string))
	// The guest writes its disk all the time: a resumed guest that runs
	// on modifies the disk it was given.
	e.must("proc", "start", "k", "--", "sh", "-c", "while true; do echo x >> /w.log; sync; sleep 0.05; done")

	// kill the CLI while the supervisor saves for pause
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cli := e.command(ctx, "pause", "k")
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pause to start saving", time.Minute, func() bool {
		m, _ := filepath.Glob(filepath.Join(dir, ".tmp-*-suspended"))
		s, _ := os.Stat(filepath.Join(dir, "suspended"))
		return len(m) > 0 || s != nil
	})
	cli.Process.Kill()
	cli.Wait()
	paused := func(what string) {
		t.Helper()
		waitFor(t, what, time.Minute, func() bool {
			row := e.row("k")
			return row["state"] == "paused" && row["paused_to"] == "disk" && len(e.processes()) == 0
		})
	}
	paused("the pause to complete without its CLI")

	// kill the new supervisor as soon as it runs during resume
	cli = e.command(ctx, "resume", "k")
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	var sup int
	waitFor(t, "the resume's supervisor", time.Minute, func() bool {
		sup = statePID(dir)
		return sup > 0
	})
	syscall.Kill(sup, syscall.SIGKILL)
	cli.Wait()
	paused("paused after a resume whose supervisor was killed early")

	// the supervisor dies once the guest runs on, before the resume commits
	e.withKillAt("resume.running", func() {
		if r := e.run("resume", "k"); r.code == 0 || !strings.Contains(r.stderr, "still paused") {
			t.Fatalf("resume killed before its commit: %s", r)
		}
	})
	paused("paused after a resume killed before its commit")

	// resume works (the saved state verifies: nothing consumed it), and
	// with its CLI killed once its supervisor runs, the supervisor
	// completes it; this supervisor will die right after committing the
	// next pause
	prev := statePID(dir)
	e.withKillAt("pause.committed", func() { cli = e.command(ctx, "resume", "k") })
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the resume's supervisor", time.Minute, func() bool {
		p := statePID(dir)
		return p > 0 && p != prev
	})
	cli.Process.Kill()
	cli.Wait()
	waitFor(t, "the resume to complete without its CLI", time.Minute, func() bool {
		row := e.row("k")
		return row["state"] == "running" && row["paused_to"] == nil
	})
	waitFor(t, "the consumed saved state to be removed", time.Minute, func() bool { return len(leftovers(dir)) == 0 })
	e.must("exec", "k", "--", "test", "-s", "/w.log")

	// kill the CLI while the supervisor saves a snapshot: it completes
	cli = e.command(ctx, "snapshot", "save", "k", "good")
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the save to start", time.Minute, func() bool {
		m, _ := filepath.Glob(filepath.Join(e.data, "snapshots", "*good"))
		return len(m) > 0
	})
	cli.Process.Kill()
	cli.Wait()
	waitFor(t, "the save to complete without its CLI", time.Minute, func() bool {
		return strings.Contains(e.must("snapshot", "ls", "--json").stdout, `"good"`)
	})

	// kill the CLI while a clone is being restored: the supervisor
	// finishes, and the clone runs
	cli = e.command(ctx, "up", "--from-snapshot", "good", "--name", "kc")
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the clone's supervisor", time.Minute, func() bool {
		link, err := os.Readlink(filepath.Join(e.state, "names", "kc"))
		return err == nil && statePID(filepath.Join(e.state, "sb", filepath.Base(link))) > 0
	})
	cli.Process.Kill()
	cli.Wait()
	waitFor(t, "the clone to run without its CLI", time.Minute, func() bool {
		row := e.row("kc")
		return row != nil && row["state"] == "running"
	})
	e.must("exec", "kc", "--", "true")
	e.must("down", "kc")

	// pause whose supervisor dies right after the commit: paused
	if r := e.run("pause", "k"); r.code != 0 || r.stdout != "k paused (to disk)\n" {
		t.Fatalf("pause whose supervisor died after the commit: %s", r)
	}
	paused("paused after its supervisor died past the commit")
	e.withKillAt("snapshot.saved", func() { e.must("resume", "k") })
	e.must("exec", "k", "--", "true")

	// kill the supervisor while it saves a snapshot, before the commit
	if r := e.run("snapshot", "save", "k", "half"); r.code == 0 || !strings.Contains(r.stderr, "no snapshot") {
		t.Fatalf("snapshot save whose supervisor died: %s", r)
	}
	if r := e.must("snapshot", "ls", "--json"); strings.Contains(r.stdout, "half") || !strings.Contains(r.stdout, "good") {
		t.Fatalf("a half snapshot is listed: %s", r.stdout)
	}
	if l := leftovers(filepath.Join(e.data, "snapshots")); len(l) != 0 {
		t.Fatalf("the half save was not cleaned: %v", l)
	}
	if r := e.run("up", "--from-snapshot", "half", "--name", "c"); r.code != 3 {
		t.Fatalf("restore of a half snapshot: %s", r)
	}
	if row := e.row("k"); row["state"] != "failed" {
		t.Fatalf("sandbox whose supervisor was killed during a save: %v", row)
	}
	e.must("down", "k")

	// kill the supervisor while it pauses, before the commit: the VM is
	// gone with it, so the sandbox cannot be running; it is failed, says
	// so, and no half-written state remains
	e.withKillAt("pause.saved", func() { e.upSmall("k2") })
	dir = filepath.Join(e.state, "sb", e.row("k2")["id"].(string))
	if r := e.run("pause", "k2"); r.code == 0 || !strings.Contains(r.stderr, "down") {
		t.Fatalf("pause whose supervisor died before the commit: %s", r)
	}
	if row := e.row("k2"); row["state"] != "failed" || !strings.Contains(row["reason"].(string), "pausing to disk") {
		t.Fatalf("ls after a pause killed before its commit: %v", row)
	}
	if l := leftovers(dir); len(l) != 0 {
		t.Fatalf("a pause killed before its commit left %v", l)
	}
	if r := e.run("resume", "k2"); r.code == 0 {
		t.Fatalf("resume of a sandbox whose pause died before the commit: %s", r)
	}
	e.must("down", "k2")
	e.assertClean()
}

// TestPauseTTLRuns: with --ttl-paused the TTL runs while the sandbox is
// paused to disk; one that expires meanwhile is shown stopped (ttl), is
// not resumed, and down removes it.
func TestPauseTTLRuns(t *testing.T) {
	e := newEnv(t)
	e.upSmall("tp", "--ttl", "10s")
	e.must("pause", "--ttl-paused", "tp")
	if row := e.row("tp"); row["state"] != "paused" || row["expires"] == nil {
		t.Fatalf("paused with its TTL running: %v", row)
	}
	waitFor(t, "the TTL to pass while paused", time.Minute, func() bool { return e.row("tp")["state"] == "stopped" })
	if r := e.run("resume", "tp"); r.code == 0 || !strings.Contains(r.stderr, "expired while paused") {
		t.Fatalf("resume after the TTL: %s", r)
	}
	e.must("down", "tp")
	e.assertClean()
}

// startAll starts mvmctl with each of cmds at once and waits for all.
func (e *env) startAll(cmds ...[]string) []result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	type running struct {
		cmd    *exec.Cmd
		so, se *bytes.Buffer
	}
	var rs []running
	for _, args := range cmds {
		c := e.command(ctx, args...)
		r := running{cmd: c, so: &bytes.Buffer{}, se: &bytes.Buffer{}}
		c.Stdout, c.Stderr = r.so, r.se
		if err := c.Start(); err != nil {
			e.t.Fatal(err)
		}
		rs = append(rs, r)
	}
	var out []result
	for i, r := range rs {
		out = append(out, e.finish(r.cmd.Wait(), cmds[i], r.so, r.se))
	}
	return out
}

// vmms lists the live VMMs of sandbox id (by the name QEMU runs under).
func vmms(id string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		stat, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue
		}
		if bytes.Contains(cmdline, []byte("mvm-"+id)) && !bytes.Contains(cmdline, []byte("__supervise")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// startCounter starts a process in the guest that counts in /tmp/count,
// and waits until it has counted.
func (e *env) startCounter(name string) {
	e.t.Helper()
	e.must("proc", "start", name, "--", "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done")
	waitFor(e.t, "the guest to count", time.Minute, func() bool {
		r := e.run("exec", name, "--", "cat", "/tmp/count")
		n, _ := strconv.Atoi(strings.TrimSpace(r.stdout))
		return n >= 3
	})
}

// countsOn checks that the guest's counter went on from where it was
// (before: read just before a pause; a guest booted anew has no counter,
// one restarted counts from 0) and keeps counting.
func (e *env) countsOn(name string, before int) {
	e.t.Helper()
	after := e.guestInt(name, "/tmp/count")
	if after < before {
		e.t.Fatalf("the count was %d before the pause and %d after the resume: not continued", before, after)
	}
	waitFor(e.t, "the guest to count on", time.Minute, func() bool { return e.guestInt(name, "/tmp/count") > after })
}

// busyOrOK accepts a lifecycle command that ran, or that found the
// sandbox busy with another one (exit 1, kind busy) and said to retry.
func busyOrOK(t *testing.T, r result) bool {
	t.Helper()
	if r.code == 0 {
		return true
	}
	if r.code != 1 || !strings.Contains(r.stderr, "is busy") || !strings.Contains(r.stderr, "retry") {
		t.Fatalf("a lifecycle command racing another: %s", r)
	}
	return false
}

// TestPauseResumeConcurrent: lifecycle commands on one sandbox issued at
// the same moment are serialised (runtime's lifecycle lock): two resumes
// of a sandbox paused to disk give one resumed VM (the second finds it
// running), never two VMMs or a failed sandbox; a pause and a resume, and
// a pause and a snapshot save, at once leave it paused or running, whole,
// with one VMM at most, and its guest counting on from where it was; a
// resume and a down at once leave nothing behind.
func TestPauseResumeConcurrent(t *testing.T) {
	e := newEnv(t)
	e.upSmall("cc")
	id := e.row("cc")["id"].(string)
	e.startCounter("cc")
	oneVMM := func(what string) {
		t.Helper()
		row := e.row("cc")
		if v := vmms(id); row["state"] != "running" || len(v) != 1 {
			t.Fatalf("%s: %v with VMMs %v", what, row, v)
		}
	}

	before := e.guestInt("cc", "/tmp/count")
	e.must("pause", "cc")
	ok := 0
	for _, r := range e.startAll([]string{"resume", "cc"}, []string{"resume", "cc"}) {
		if busyOrOK(t, r) {
			ok++
		}
	}
	if ok == 0 {
		t.Fatal("neither of two resumes resumed the sandbox")
	}
	oneVMM("two resumes at once")
	e.countsOn("cc", before)

	before = e.guestInt("cc", "/tmp/count")
	e.startAll([]string{"pause", "cc"}, []string{"resume", "cc"})
	if row := e.row("cc"); row["state"] == "paused" {
		if row["paused_to"] != "disk" || len(vmms(id)) != 0 {
			t.Fatalf("pause and resume at once: %v with VMMs %v", row, vmms(id))
		}
		e.must("resume", "cc")
	}
	oneVMM("pause and resume at once")
	e.countsOn("cc", before)

	before = e.guestInt("cc", "/tmp/count")
	rs := e.startAll([]string{"pause", "cc"}, []string{"snapshot", "save", "cc", "s1"})
	busyOrOK(t, rs[0])
	if rs[1].code != 0 && rs[1].code != 125 && !busyOrOK(t, rs[1]) { // 125: it was paused first
		t.Fatalf("snapshot save during a pause: %s", rs[1])
	}
	if row := e.row("cc"); row["state"] != "paused" || row["paused_to"] != "disk" || len(vmms(id)) != 0 {
		t.Fatalf("pause and snapshot save at once: %v with VMMs %v", row, vmms(id))
	}
	e.must("resume", "cc")
	oneVMM("resumed after a pause raced by a snapshot save")
	e.countsOn("cc", before)

	// resume and down at once: removed either way, nothing left running
	// (a down that removed the directory under a resume's restore left
	// its VMM running)
	e.must("pause", "cc")
	rs = e.startAll([]string{"resume", "cc"}, []string{"down", "cc"})
	if rs[0].code != 0 && rs[0].code != 3 { // 3: removed before it could resume
		t.Fatalf("resume racing down: %s", rs[0])
	}
	if rs[1].code != 0 {
		t.Fatalf("down racing resume: %s", rs[1])
	}
	waitFor(t, "the sandbox's processes to exit", time.Minute, func() bool { return len(e.processes()) == 0 })
	e.assertClean()
}

// rebootHost makes the host look rebooted under the paused-to-disk
// sandbox in dir: nothing of mvm runs, the sockets its processes served
// are left behind, and the pids its state records belong to unrelated
// live processes. The supervisor pid is a process whose command line is
// another sandbox's supervisor's (the pid reused by one started after the
// reboot), the VMM pid a plain one. It returns those pids.
func (e *env) rebootHost(dir string) []int {
	e.t.Helper()
	if p := e.processes(); len(p) != 0 {
		e.t.Fatalf("processes of a sandbox paused to disk: %v", p)
	}
	for _, s := range []string{"ctl.sock", "agent.sock", "qmp.sock", "channel.sock"} {
		os.Remove(filepath.Join(dir, s))
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, s), Net: "unix"})
		if err != nil {
			e.t.Fatal(err)
		}
		l.SetUnlinkOnClose(false) // left behind, as by a process that died
		l.Close()
	}
	var pids []int
	for _, argv := range [][]string{
		{"sh", "-c", "sleep 600; :", "__supervise", filepath.Join(e.t.TempDir(), "sb", "0123456789ab")},
		{"sh", "-c", "sleep 600; :"},
	} {
		c := exec.Command(argv[0], argv[1:]...)
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.Start(); err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(func() { syscall.Kill(-c.Process.Pid, syscall.SIGKILL); c.Wait() })
		pids = append(pids, c.Process.Pid)
	}
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		e.t.Fatal(err)
	}
	st["supervisor_pid"], st["vmm_pid"] = pids[0], pids[1]
	b, _ = json.Marshal(st)
	if err := os.WriteFile(filepath.Join(dir, "state.json"), b, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return pids
}

// TestPausedSurvivesHostReboot: a sandbox paused to disk outlives a host
// reboot (simulated: rebootHost). `ls` shows it paused, resume continues
// it (its guest counts on from where it was), and down of one paused
// again and "rebooted" again removes it without touching the processes
// that now have its recorded pids.
func TestPausedSurvivesHostReboot(t *testing.T) {
	e := newEnv(t)
	e.upSmall("rb")
	dir := filepath.Join(e.state, "sb", e.row("rb")["id"].(string))
	e.startCounter("rb")
	before := e.guestInt("rb", "/tmp/count")
	e.must("pause", "rb")
	e.rebootHost(dir)
	if row := e.row("rb"); row["state"] != "paused" || row["paused_to"] != "disk" {
		t.Fatalf("ls after a reboot: %v", row)
	}
	e.must("resume", "rb")
	if row := e.row("rb"); row["state"] != "running" {
		t.Fatalf("ls after resuming past a reboot: %v", row)
	}
	e.countsOn("rb", before)

	e.must("pause", "rb")
	pids := e.rebootHost(dir)
	if row := e.row("rb"); row["state"] != "paused" || row["paused_to"] != "disk" {
		t.Fatalf("ls after a second reboot: %v", row)
	}
	e.must("down", "rb")
	for _, pid := range pids {
		stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); err != nil || i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
			t.Errorf("down of a sandbox paused to disk killed pid %d, which the reboot gave to an unrelated process", pid)
		}
	}
	e.assertClean()
}
