package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/testbin"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// evil is what a hostile guest prints: a title change, a screen clear and
// a colour, then a marker to find it by.
const evilSeq = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"

// buildAgent builds mvm-agent with main.go replaced by src (go build
// -overlay): the agent package itself is unchanged.
func buildAgent(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	main := filepath.Join(dir, "main.go")
	os.WriteFile(main, []byte(src), 0o644)
	overlay := filepath.Join(dir, "overlay.json")
	os.WriteFile(overlay, []byte(`{"Replace":{"`+filepath.Join(testbin.Root(), "cmd", "mvm-agent", "main.go")+`":"`+main+`"}}`), 0o644)
	bin := filepath.Join(dir, "mvm-agent")
	build := exec.Command("go", "build", "-overlay", overlay, "-o", bin, "./cmd/mvm-agent")
	build.Dir = testbin.Root()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	return bin
}

// TestGuestStringsEscaped is issue 11 items 13 and 16 on a real microVM
// with a hostile agent: it claims to be a sealed image, names itself with
// terminal escapes and prints escapes on the console. boot-report, logs
// and boot errors show them escaped; the host keeps the artifact's image
// profile (dev), not the guest's claim.
func TestGuestStringsEscaped(t *testing.T) {
	liar := buildAgent(t, `package main

import (
	"os"

	"github.com/mvm-sandbox/mvm/internal/agent"
)

func main() {
	if os.Getpid() == 1 {
		os.Stdout.WriteString("`+strings.ReplaceAll(strings.ReplaceAll(evilSeq, "\x1b", `\x1b`), "\x07", `\x07`)+`EVIL-CONSOLE\n")
		os.MkdirAll("/etc/mvm", 0o755)
		os.WriteFile("/etc/mvm/image.json", []byte(`+"`"+`{"profile":"sealed"}`+"`"+`), 0o644)
	}
	agent.Version = "0.1`+strings.ReplaceAll(strings.ReplaceAll(evilSeq, "\x1b", `\x1b`), "\x07", `\x07`)+`EVIL-VERSION"
	agent.Main()
}
`)
	e := newEnv(t)
	e.extra = append(e.extra, "MVM_AGENT_BIN="+liar)
	defer func() {
		e.run("down", "--all")
		e.assertClean()
	}()
	e.must("up", "--name", "liar")

	// Item 16: the image profile is the artifact's.
	for _, sb := range e.sandboxes() {
		if sb["name"] == "liar" && sb["image_profile"] != "dev" {
			t.Errorf("image profile recorded from the guest's claim: %v", sb)
		}
	}
	if st := e.stateOf("liar"); st["image"].(map[string]any)["image_profile"] != "dev" {
		t.Errorf("state: %v", st["image"])
	}
	var log []byte
	if !testenv.Poll(30*time.Second, 100*time.Millisecond, func() bool {
		log, _ = os.ReadFile(filepath.Join(e.sandboxDir("liar"), "supervisor.log"))
		return strings.Contains(string(log), `reports image profile "sealed"`)
	}) {
		t.Errorf("no mismatch logged: %s", log)
	}

	// Item 13: boot-report shows the guest's strings escaped.
	r := e.must("boot-report", "liar")
	if strings.ContainsRune(r.stdout, 0x1b) || strings.ContainsRune(r.stdout, 0x07) || !strings.Contains(r.stdout, `\x1b]0;pwned\x07`) || !strings.Contains(r.stdout, "EVIL-VERSION") {
		t.Errorf("boot-report: %q", r.stdout)
	}
	// logs too, unless --raw.
	r = e.must("logs", "liar", "-n", "500")
	if strings.ContainsRune(r.stdout, 0x1b) || !strings.Contains(r.stdout, `\x1b]0;pwned\x07`+`\x1b[2J`) || !strings.Contains(r.stdout, "EVIL-CONSOLE") {
		t.Errorf("logs: %q", trunc(r.stdout))
	}
	if r := e.must("logs", "liar", "--raw"); !strings.Contains(r.stdout, evilSeq+"EVIL-CONSOLE") {
		t.Errorf("logs --raw: %q", trunc(r.stdout))
	}
	e.must("down", "liar")

	// A boot that fails shows the console's tail, escaped: this agent
	// never answers and keeps printing until the boot deadline.
	crash := buildAgent(t, `package main

import (
	"os"
	"time"
)

func main() {
	for {
		os.Stdout.WriteString("`+strings.ReplaceAll(strings.ReplaceAll(evilSeq, "\x1b", `\x1b`), "\x07", `\x07`)+`EVIL-CRASH\n")
		time.Sleep(200 * time.Millisecond)
	}
}
`)
	e.extra = append(e.extra, "MVM_AGENT_BIN="+crash, "MVM_BOOT_TIMEOUT=20s")
	r = e.run("up", "--name", "crash")
	if r.code == 0 || !strings.Contains(r.stderr, "EVIL-CRASH") || strings.ContainsRune(r.stderr, 0x1b) {
		t.Errorf("failed boot: %s", r)
	}
}

// TestConsoleLogCapped is issue 11 item 13: a guest flooding its console
// fills at most two generations of MVM_CONSOLE_LOG_MAX bytes, and
// `logs -n 1` still finds the last line.
func TestConsoleLogCapped(t *testing.T) {
	e := newEnv(t)
	e.extra = append(e.extra, "MVM_CONSOLE_LOG_MAX=65536")
	defer func() {
		e.run("down", "--all")
		e.assertClean()
	}()
	e.must("up", "--name", "noisy")
	e.must("exec", "noisy", "--", "sh", "-c",
		`i=0; while [ $i -lt 4000 ]; do echo "flood $i ................................................"; i=$((i+1)); done > /dev/console`)
	dir := e.sandboxDir("noisy")
	var last string
	testenv.Eventually(t, time.Minute, 200*time.Millisecond, func() bool {
		last = e.must("logs", "noisy", "-n", "1").stdout
		return strings.Contains(last, "flood 3999 ")
	}, func() string { return fmt.Sprintf("the last line (logs -n 1: %q)", last) })
	cur, err1 := os.Stat(filepath.Join(dir, "console.log"))
	old, err2 := os.Stat(filepath.Join(dir, "console.log.1"))
	if err1 != nil || err2 != nil || cur.Size() > 65536 || old.Size() > 65536 {
		t.Fatalf("console log not capped: %v %v %v %v", cur, old, err1, err2)
	}
	if cur.Mode().Perm() != 0o600 {
		t.Errorf("console.log mode %v", cur.Mode())
	}
	if r := e.must("logs", "noisy", "-n", "3"); strings.Count(r.stdout, "\n") != 3 || !strings.Contains(r.stdout, "flood 3997 ") {
		t.Errorf("logs -n 3: %q", r.stdout)
	}
	// The cache it booted from is private (issue 11 item 15).
	cache := paths.FromEnv().Cache
	if st, err := os.Stat(cache); err != nil || st.Mode().Perm()&0o077 != 0 {
		t.Errorf("cache %s is readable by others: %v", cache, err)
	}

	// Issue 11 item 17, as docs/images.md says: the minimal image's busybox
	// wget crashes with -T; `timeout N wget` is the way to bound it.
	t.Run("BusyboxWgetTimeout", func(t *testing.T) {
		r := e.run("exec", "noisy", "--", "sh", "-c", "wget -q -T 2 -O - http://127.0.0.1:1/; echo rc=$?")
		if !strings.Contains(r.stdout, "rc=139") {
			t.Errorf("wget -T no longer crashes: update docs/images.md (%s)", r)
		}
		r = e.run("exec", "noisy", "--", "sh", "-c", "timeout 5 wget -q -O - http://127.0.0.1:1/; echo rc=$?")
		if !strings.Contains(r.stdout, "rc=1") {
			t.Errorf("timeout 5 wget: %s", r)
		}
	})
}

// sandboxDir is the state directory of sandbox name.
func (e *env) sandboxDir(name string) string {
	e.t.Helper()
	link, err := os.Readlink(filepath.Join(e.state, "names", name))
	if err != nil {
		e.t.Fatalf("no sandbox %s: %v", name, err)
	}
	return filepath.Join(e.state, "sb", filepath.Base(link))
}
