package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// mcpClient is an MCP client session on a real `mvmctl mcp stdio`.
type mcpClient struct {
	t      *testing.T
	cmd    *exec.Cmd
	cs     *sdk.ClientSession
	stderr *lockedBuffer
	cancel context.CancelFunc
	stdin  io.Closer     // ownStdin mode
	exited chan struct{} // ownStdin mode
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startMCP runs `mvmctl mcp stdio` with extra environment and connects
// the Go SDK's client to it through CommandTransport (initialize). The
// whole session has a deadline; closing it waits long enough (60s) that
// the server must exit on EOF by itself, without SIGTERM.
func startMCP(t *testing.T, e *env, extraEnv ...string) *mcpClient {
	return startMCPWith(t, e, false, "", extraEnv...)
}

// startMCPWith, with ownStdin, runs the server on pipes the test holds
// and speaks to it through the SDK's IOTransport, so that the test can
// close the server's stdin while a call is in flight: the SDK client's
// own Close waits for in-flight calls before it closes stdin.
// A dir other than "" is the server's working directory.
func startMCPWith(t *testing.T, e *env, ownStdin bool, dir string, extraEnv ...string) *mcpClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	saved := e.extra
	e.extra = append(append([]string(nil), e.extra...), extraEnv...)
	cmd := e.command(ctx, "mcp", "stdio")
	cmd.Dir = dir
	e.extra = saved
	m := &mcpClient{t: t, cmd: cmd, stderr: &lockedBuffer{}, cancel: cancel}
	cmd.Stderr = m.stderr
	var transport sdk.Transport = &sdk.CommandTransport{Command: cmd, TerminateDuration: 60 * time.Second}
	if ownStdin {
		inR, inW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdin, cmd.Stdout = inR, outW
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		inR.Close()
		outW.Close()
		m.stdin = inW
		m.exited = make(chan struct{})
		go func() { cmd.Wait(); close(m.exited) }()
		transport = &sdk.IOTransport{Reader: outR, Writer: inW}
	}
	client := sdk.NewClient(&sdk.Implementation{Name: "mvm-e2e", Version: "1"}, nil)
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	cs, err := client.Connect(cctx, transport, nil)
	if err != nil {
		cancel()
		t.Fatalf("connect to mvmctl mcp stdio: %v\nstderr:\n%s", err, m.stderr)
	}
	m.cs = cs
	t.Cleanup(func() {
		cancel() // kills the server if a test left it running
		m.cs.Close()
		if t.Failed() {
			t.Logf("mcp server stderr:\n%s", trunc(m.stderr.String()))
		}
	})
	return m
}

// closeStdin closes the server's stdin (ownStdin mode) while calls may
// be in flight, and waits for the server to exit by itself.
func (m *mcpClient) closeStdin(within time.Duration) time.Duration {
	m.t.Helper()
	t0 := time.Now()
	m.stdin.Close()
	select {
	case <-m.exited:
	case <-time.After(within):
		m.t.Fatalf("server still running %s after its stdin closed", within)
	}
	if st := m.cmd.ProcessState; st == nil || st.ExitCode() != 0 {
		m.t.Errorf("server exit after EOF: %v", st)
	}
	return time.Since(t0)
}

// call makes one tool call with a deadline and returns the result and
// its structured content.
func (m *mcpClient) call(name string, args map[string]any, timeout time.Duration) (*sdk.CallToolResult, map[string]any) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := m.cs.CallTool(ctx, &sdk.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		m.t.Fatalf("%s: %v\nstderr:\n%s", name, err, trunc(m.stderr.String()))
	}
	var out map[string]any
	if res.StructuredContent != nil {
		b, _ := json.Marshal(res.StructuredContent)
		json.Unmarshal(b, &out)
	}
	return res, out
}

func mcpText(r *sdk.CallToolResult) string {
	var b strings.Builder
	for _, c := range r.Content {
		if t, ok := c.(*sdk.TextContent); ok {
			b.WriteString(t.Text)
		}
	}
	return b.String()
}

func (m *mcpClient) ok(name string, args map[string]any, timeout time.Duration) map[string]any {
	m.t.Helper()
	res, out := m.call(name, args, timeout)
	if res.IsError {
		m.t.Fatalf("%s: tool error: %s", name, mcpText(res))
	}
	if out == nil {
		m.t.Fatalf("%s: no structured result", name)
	}
	return out
}

func (m *mcpClient) fails(name string, args map[string]any, want string) string {
	m.t.Helper()
	res, _ := m.call(name, args, 30*time.Second)
	if !res.IsError || !strings.Contains(mcpText(res), want) {
		m.t.Fatalf("%s: want a tool error containing %q, got isError=%v: %s", name, want, res.IsError, mcpText(res))
	}
	return mcpText(res)
}

// handles lists the sandbox handles sandbox_list reports.
func (m *mcpClient) handles() ([]string, float64) {
	out := m.ok("sandbox_list", nil, 30*time.Second)
	var hs []string
	for _, s := range out["sandboxes"].([]any) {
		hs = append(hs, s.(map[string]any)["sandbox"].(string))
	}
	return hs, out["inflight"].(float64)
}

// closeAndWait closes stdin and waits for the server to exit on its own:
// the SDK sends SIGTERM only after TerminateDuration (60s), and a server
// stopped by it would exit 143, not 0.
func (m *mcpClient) closeAndWait() {
	m.t.Helper()
	m.cs.Close()
	if st := m.cmd.ProcessState; st == nil || st.ExitCode() != 0 {
		m.t.Errorf("server exit after EOF: %v (0 means it stopped by itself)", st)
	}
}

// TestMCPFlow: initialize, tools/list, refusals before dispatch, then
// create → write → run → read → list → destroy on a real sandbox, a
// transient run_code (shell, and python when the template can be built)
// and EOF cleanup.
func TestMCPFlow(t *testing.T) {
	e := newEnv(t)
	m := startMCP(t, e, "MVM_MCP_MEM_CEILING_MIB=1024")

	ir := m.cs.InitializeResult()
	if ir == nil || ir.ServerInfo == nil || ir.ServerInfo.Name != "mvm" || ir.Capabilities.Tools == nil {
		t.Fatalf("initialize: %+v", ir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tools, err := m.cs.ListTools(ctx, nil)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range tools.Tools {
		names = append(names, tl.Name)
	}
	want := "files_list files_read files_write run_code run_command sandbox_create sandbox_destroy sandbox_list sandbox_snapshot"
	if got := strings.Join(sortedStrings(names), " "); got != want {
		t.Fatalf("tools: %s\nwant %s", got, want)
	}

	// Refused before anything boots.
	m.fails("sandbox_create", map[string]any{"memory_mib": 2048}, "memory ceiling of 1024 MiB")
	m.fails("run_code", map[string]any{"language": "shell", "code": "true", "memory_mib": 4096}, "MVM_MCP_MEM_CEILING_MIB")
	m.fails("sandbox_create", map[string]any{"allow": []string{"not a host!"}}, "refused: allow")
	m.fails("run_command", map[string]any{"command": "true", "template": "/etc"}, "host directories are not accepted")
	if d := e.sandboxDirs(); len(d) > 0 {
		t.Fatalf("a refused call left sandboxes: %v", d)
	}

	// A sandbox with state across calls.
	t0 := time.Now()
	c := m.ok("sandbox_create", map[string]any{"ttl": "10m"}, 3*time.Minute)
	sb := c["sandbox"].(string)
	t.Logf("sandbox_create: %s in %s", sb, time.Since(t0).Round(time.Millisecond))
	if c["network"] != "none" || c["run_profile"] != "restrictive" {
		t.Errorf("create: %v", c)
	}
	if r := e.must("ls", "--json"); !strings.Contains(r.stdout, sb) {
		t.Errorf("mvmctl ls does not show %s: %s", sb, r.stdout)
	}
	script := "#!/bin/sh\necho \"job: $(cat /work/in.txt)\"\necho \"$1\" > /work/out.txt\necho to-stderr >&2\nexit 7\n"
	w := m.ok("files_write", map[string]any{"sandbox": sb, "path": "/work/job.sh", "content": script}, 30*time.Second)
	if w["bytes"].(float64) != float64(len(script)) {
		t.Errorf("files_write: %v", w)
	}
	m.ok("files_write", map[string]any{"sandbox": sb, "path": "/work/in.txt", "content_base64": "aGVsbG8gd29ybGQ="}, 30*time.Second)
	r := m.ok("run_command", map[string]any{"sandbox": sb, "argv": []string{"sh", "/work/job.sh", "written-by-job"}}, time.Minute)
	if r["exit_code"].(float64) != 7 || r["stdout"] != "job: hello world\n" || r["stderr"] != "to-stderr\n" || r["timed_out"] != false {
		t.Errorf("run_command: %v", r)
	}
	if r["audit_id"] == nil {
		t.Errorf("run_command carries no audit id: %v", r)
	}
	r = m.ok("run_command", map[string]any{"sandbox": sb, "command": "head -c 70000 /dev/zero | tr '\\0' x"}, time.Minute)
	if r["stdout_truncated"] != true || r["stdout_bytes"].(float64) != 70000 || len(r["stdout"].(string)) != 65536 {
		t.Errorf("large output: truncated=%v bytes=%v len=%d", r["stdout_truncated"], r["stdout_bytes"], len(r["stdout"].(string)))
	}
	res, _ := m.call("run_command", map[string]any{"sandbox": sb, "command": "sleep 30", "timeout": 1}, time.Minute)
	if res.IsError || !strings.Contains(mcpText(res), "timed out") {
		t.Errorf("timeout: %s", mcpText(res))
	}
	rd := m.ok("files_read", map[string]any{"sandbox": sb, "path": "/work/out.txt"}, 30*time.Second)
	if rd["content"] != "written-by-job\n" || rd["truncated"] != false {
		t.Errorf("files_read: %v", rd)
	}
	ls := m.ok("files_list", map[string]any{"sandbox": sb, "path": "/work"}, 30*time.Second)
	var listed []string
	for _, en := range ls["entries"].([]any) {
		listed = append(listed, en.(map[string]any)["name"].(string))
	}
	if got := strings.Join(sortedStrings(listed), " "); got != "in.txt job.sh out.txt" {
		t.Errorf("files_list: %s", got)
	}
	if hs, _ := m.handles(); len(hs) != 1 || hs[0] != sb {
		t.Errorf("sandbox_list: %v", hs)
	}
	d := m.ok("sandbox_destroy", map[string]any{"sandbox": sb}, time.Minute)
	if d["destroyed"] != true {
		t.Errorf("destroy: %v", d)
	}
	m.fails("run_command", map[string]any{"sandbox": sb, "command": "true"}, "no longer exists")
	if d := e.sandboxDirs(); len(d) > 0 {
		t.Errorf("after sandbox_destroy: %v", d)
	}

	// Transient: a fresh sandbox for one call, gone afterwards.
	t0 = time.Now()
	r = m.ok("run_code", map[string]any{"language": "shell", "code": "echo $((6*7)); uname -s"}, 3*time.Minute)
	t.Logf("transient run_code shell: %s (boot %vms)", time.Since(t0).Round(time.Millisecond), r["boot_ms"])
	if r["stdout"] != "42\nLinux\n" || r["exit_code"].(float64) != 0 || r["transient"] != true {
		t.Errorf("run_code shell: %v", r)
	}
	if d := e.sandboxDirs(); len(d) > 0 {
		t.Errorf("transient run left: %v", d)
	}

	t.Run("python", func(t *testing.T) {
		t0 := time.Now()
		// The python template is built on first use (mmdebstrap, which
		// scripts/test.sh's setup provides); a failure to boot it is a
		// failure, not a reason to skip.
		res, r := m.call("run_code", map[string]any{"language": "python", "code": "import sys\nprint(sys.version_info[0], sum(range(10)))"}, 6*time.Minute)
		if res.IsError {
			t.Fatalf("run_code python: %s", mcpText(res))
		}
		t.Logf("transient run_code python: %s (start %vms incl. any image build)", time.Since(t0).Round(time.Millisecond), r["boot_ms"])
		if r["stdout"] != "3 45\n" || r["exit_code"].(float64) != 0 {
			t.Errorf("run_code python: %v", r)
		}
	})

	m.closeAndWait()
	e.assertClean()
}

// TestMCPBusyAndEOF: with MVM_MCP_MAX_INFLIGHT=1 and a long command in
// flight, other calls are refused as busy without booting anything; then
// the client closes stdin mid-call: the call still gets its answer, and
// then the server destroys its sandbox and exits 0.
func TestMCPBusyAndEOF(t *testing.T) {
	e := newEnv(t)
	m := startMCPWith(t, e, true, "", "MVM_MCP_MAX_INFLIGHT=1")
	sb := m.ok("sandbox_create", nil, 3*time.Minute)["sandbox"].(string)

	type answer struct {
		res *sdk.CallToolResult
		err error
	}
	long := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		res, err := m.cs.CallTool(ctx, &sdk.CallToolParams{Name: "run_command",
			Arguments: map[string]any{"sandbox": sb, "command": "sleep 10; echo slept", "timeout": 120}})
		long <- answer{res, err}
	}()
	// sandbox_list is never refused as busy and reports calls in flight.
	waitFor(t, "the sleep call to be in flight", time.Minute, func() bool {
		_, n := m.handles()
		return n == 1
	})
	for _, c := range []struct {
		tool string
		args map[string]any
	}{
		{"run_command", map[string]any{"sandbox": sb, "command": "true"}},
		{"run_code", map[string]any{"language": "shell", "code": "true"}},
		{"sandbox_create", nil},
	} {
		msg := m.fails(c.tool, c.args, "busy")
		if !strings.Contains(msg, "MVM_MCP_MAX_INFLIGHT=1") {
			t.Errorf("busy message does not name the limit: %s", msg)
		}
	}
	if n := len(e.sandboxDirs()); n != 1 {
		t.Errorf("busy calls must not boot: %d sandboxes", n)
	}

	// EOF with the sleep still running: it is answered, then the server
	// exits by itself.
	d := m.closeStdin(2 * time.Minute)
	t.Logf("server exit after EOF with a call in flight: %s", d.Round(time.Millisecond))
	a := <-long
	if a.err != nil || a.res == nil || a.res.IsError || !strings.Contains(mcpText(a.res), "slept") {
		t.Errorf("the call in flight at EOF was not answered: %v %v", a.err, a.res)
	}
	waitFor(t, "no sandbox and no process left", 30*time.Second, func() bool {
		return len(e.sandboxDirs()) == 0 && len(e.processes()) == 0
	})
	e.assertClean()
}

// TestMCPIdleAndSIGTERM: a sandbox idle for MVM_MCP_SESSION_IDLE is
// destroyed; then SIGTERM with a call in flight destroys the rest.
func TestMCPIdleAndSIGTERM(t *testing.T) {
	e := newEnv(t)
	m := startMCP(t, e, "MVM_MCP_SESSION_IDLE=3s")
	idle := m.ok("sandbox_create", nil, 3*time.Minute)["sandbox"].(string)
	created := time.Now()
	waitFor(t, "the idle sandbox to be destroyed", time.Minute, func() bool {
		hs, _ := m.handles()
		for _, h := range hs {
			if h == idle {
				return false
			}
		}
		return true
	})
	t.Logf("idle sandbox gone from sandbox_list %s after creation (idle limit 3s)", time.Since(created).Round(time.Millisecond))
	// sandbox_list counts as activity for no sandbox; a call on the
	// expired handle says why it is gone.
	m.fails("files_list", map[string]any{"sandbox": idle, "path": "/"}, "idle for 3s")
	waitFor(t, "its VM and state to go", 30*time.Second, func() bool {
		return len(e.sandboxDirs()) == 0 && len(e.processes()) == 0
	})

	// SIGTERM: a busy sandbox (not idle) and a call in flight. This one
	// asks for an allowlist, which gives it a network interface.
	sb := m.ok("sandbox_create", map[string]any{"allow": []string{"example.com"}}, 3*time.Minute)["sandbox"].(string)
	if out := m.ok("run_command", map[string]any{"sandbox": sb, "command": "cat /proc/net/dev"}, time.Minute); !strings.Contains(fmt.Sprint(out["stdout"]), "eth0") {
		t.Errorf("allowlisted MCP sandbox has no eth0: %v", out)
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		m.cs.CallTool(ctx, &sdk.CallToolParams{Name: "run_command",
			Arguments: map[string]any{"sandbox": sb, "command": "sleep 120", "timeout": 180}})
	}()
	waitFor(t, "the sleep call to be in flight", time.Minute, func() bool {
		_, n := m.handles()
		return n == 1
	})
	t0 := time.Now()
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.cs.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("server did not exit within 30s of SIGTERM")
	}
	waitFor(t, "no sandbox and no process left after SIGTERM", 30*time.Second, func() bool {
		return len(e.sandboxDirs()) == 0 && len(e.processes()) == 0
	})
	t.Logf("SIGTERM to clean: %s", time.Since(t0).Round(time.Millisecond))
	e.assertClean()
}

// TestMCPSealed: a sealed image refuses ad-hoc code and file changes
// through MCP as it does through the CLI; reading still works.
func TestMCPSealed(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("template = \"minimal\"\nname = \"mcp-e2e-sealed\"\nprofile = \"sealed\"\ncommand = [\"true\"]\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "data.txt"), []byte("sealed data\n"), 0o644)
	e.must("build", dir)
	m := startMCP(t, e)
	sc := m.ok("sandbox_create", map[string]any{"template": "mcp-e2e-sealed"}, 3*time.Minute)
	if sc["image_profile"] != "sealed" {
		t.Errorf("sandbox_create of a sealed image reports image_profile %v", sc["image_profile"])
	}
	sb := sc["sandbox"].(string)
	m.fails("run_command", map[string]any{"sandbox": sb, "command": "id"}, "refused")
	m.fails("run_code", map[string]any{"sandbox": sb, "language": "shell", "code": "id"}, "sealed")
	m.fails("files_write", map[string]any{"sandbox": sb, "path": "/tmp/x", "content": "x"}, "refused")
	if rd := m.ok("files_read", map[string]any{"sandbox": sb, "path": "/work/data.txt"}, 30*time.Second); rd["content"] != "sealed data\n" {
		t.Errorf("files_read on a sealed image: %v", rd)
	}
	m.closeAndWait()
	e.assertClean()
}

// TestMCPInvalidLimits: a bad limit stops the server at start, with a
// message on stderr and nothing on stdout.
func TestMCPInvalidLimits(t *testing.T) {
	e := newEnv(t)
	for _, kv := range []string{"MVM_MCP_SESSION_IDLE=soon", "MVM_MCP_SESSION_MAX=0", "MVM_MCP_MAX_INFLIGHT=zero", "MVM_MCP_MEM_CEILING_MIB=64"} {
		e.extra = []string{kv}
		r := e.run("mcp", "stdio")
		name := kv[:strings.IndexByte(kv, '=')]
		if r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, name) {
			t.Errorf("%s: %s", kv, r)
		}
	}
	e.extra = nil
	if r := e.run("mcp", "stdio"); r.code != 0 || r.stdout != "" {
		t.Errorf("valid limits, immediate EOF: %s", r)
	}
}

func sortedStrings(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestMCPCapsAndReportedNetwork (issue 11 items 2, 8, 10): through a real
// server and real microVMs, host.mvm.internal is refused; a sandbox made
// with an allowlist reports the network and profile it was admitted with
// (and has eth0), one without reports none (and has no eth0); the
// session's caps on live sandboxes and their total memory refuse more
// before anything boots, and a destroy gives the place back.
func TestMCPCapsAndReportedNetwork(t *testing.T) {
	e := newEnv(t)
	m := startMCP(t, e, "MVM_MCP_MAX_SANDBOXES=2", "MVM_MCP_TOTAL_MEM_MIB=768")

	m.fails("sandbox_create", map[string]any{"allow": []string{"host.mvm.internal:2375"}}, "host.mvm.internal")
	if d := e.sandboxDirs(); len(d) != 0 {
		t.Fatalf("a refused allowlist left sandboxes: %v", d)
	}

	nc := m.ok("sandbox_create", map[string]any{"allow": []string{"example.com"}, "memory_mib": 512}, 3*time.Minute)
	if nc["network"] != "allowlist" || nc["run_profile"] != "standard" || fmt.Sprint(nc["allow"]) != "[example.com:443]" {
		t.Errorf("sandbox_create with allow reports network=%v run_profile=%v allow=%v", nc["network"], nc["run_profile"], nc["allow"])
	}
	netSB := nc["sandbox"].(string)
	if out := m.ok("run_command", map[string]any{"sandbox": netSB, "command": "cat /proc/net/dev"}, time.Minute); !strings.Contains(fmt.Sprint(out["stdout"]), "eth0") {
		t.Errorf("the sandbox reported as allowlist has no eth0: %v", out["stdout"])
	}

	m.fails("sandbox_create", map[string]any{"memory_mib": 512}, "MVM_MCP_TOTAL_MEM_MIB=768")
	if n := len(e.sandboxDirs()); n != 1 {
		t.Fatalf("a call refused by the memory cap booted: %d sandboxes", n)
	}

	pc := m.ok("sandbox_create", map[string]any{"memory_mib": 256}, 3*time.Minute)
	if pc["network"] != "none" || pc["run_profile"] != "restrictive" || pc["allow"] != nil {
		t.Errorf("sandbox_create without allow: %v", pc)
	}
	plain := pc["sandbox"].(string)
	if out := m.ok("run_command", map[string]any{"sandbox": plain, "command": "cat /proc/net/dev"}, time.Minute); strings.Contains(fmt.Sprint(out["stdout"]), "eth0") {
		t.Errorf("the sandbox reported as network none has eth0: %v", out["stdout"])
	}

	m.fails("sandbox_create", map[string]any{"memory_mib": 128}, "MVM_MCP_MAX_SANDBOXES=2")
	m.fails("run_code", map[string]any{"language": "shell", "code": "true", "memory_mib": 128}, "MVM_MCP_MAX_SANDBOXES=2")
	if n := len(e.sandboxDirs()); n != 2 {
		t.Fatalf("calls refused by the sandbox cap booted: %d sandboxes", n)
	}
	l := m.ok("sandbox_list", nil, 30*time.Second)
	if l["live_sandboxes"] != 2.0 || l["mem_in_use_mib"] != 768.0 {
		t.Errorf("sandbox_list use: live=%v mem=%v", l["live_sandboxes"], l["mem_in_use_mib"])
	}

	m.ok("sandbox_destroy", map[string]any{"sandbox": plain}, time.Minute)
	r := m.ok("run_code", map[string]any{"language": "shell", "code": "echo freed", "memory_mib": 256}, 3*time.Minute)
	if r["stdout"] != "freed\n" || r["transient"] != true {
		t.Errorf("transient run after a destroy freed a place: %v", r)
	}
	m.closeAndWait()
	e.assertClean()
}

// TestMCPPipedBatch (issue 17): a batch piped into the real binary, stdin
// closed right after it, gets a reply to every request, including a
// transient run that boots a microVM after the input ended. The server's
// working directory holds agent/mvm.toml: template "agent" is refused
// (issue 11 item 12), it used to build that directory.
func TestMCPPipedBatch(t *testing.T) {
	e := newEnv(t)
	cwd := t.TempDir()
	os.MkdirAll(filepath.Join(cwd, "agent"), 0o755)
	os.WriteFile(filepath.Join(cwd, "agent", "mvm.toml"), []byte("template = \"minimal\"\nname = \"from-cwd\"\n"), 0o644)
	batch := strings.Join([]string{
		`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"pipe","version":"1"}}}`,
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		`{"jsonrpc":"2.0","id":2,"method":"tools/list"}`,
		`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"run_code","arguments":{"language":"shell","code":"echo batch-$((6*7))"}}}`,
		`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"sandbox_create","arguments":{"template":"agent"}}}`,
		`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"sandbox_list","arguments":{}}}`,
	}, "\n") + "\n"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := e.command(ctx, "mcp", "stdio")
	cmd.Dir = cwd
	cmd.Stdin = strings.NewReader(batch) // EOF right after the batch
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("mcp stdio: %v\nstderr:\n%s", err, trunc(stderr.String()))
	}
	replies := map[float64]map[string]any{}
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var msg map[string]any
		if err := json.Unmarshal([]byte(line), &msg); err != nil {
			t.Fatalf("stdout carries a line that is not JSON-RPC: %q", line)
		}
		if id, ok := msg["id"].(float64); ok {
			replies[id] = msg
		}
	}
	for id := 1.0; id <= 5; id++ {
		if replies[id] == nil {
			t.Errorf("request %v got no reply (stderr:\n%s)", id, trunc(stderr.String()))
		}
	}
	run, _ := replies[3]["result"].(map[string]any)
	if sc, _ := run["structuredContent"].(map[string]any); sc == nil || sc["stdout"] != "batch-42\n" || sc["transient"] != true {
		t.Errorf("the transient run answered after EOF: %v", replies[3])
	}
	refused, _ := replies[4]["result"].(map[string]any)
	if refused == nil || refused["isError"] != true || !strings.Contains(fmt.Sprint(refused["content"]), "not a template") {
		t.Errorf("template \"agent\" with ./agent in the server's directory: %v", replies[4])
	}
	e.assertClean()
}

// TestMCPTemplateNeverReadsCwd (issue 11 item 12): a built image's name
// that is also a directory with an mvm.toml in the server's working
// directory boots the built image; the directory is never read.
func TestMCPTemplateNeverReadsCwd(t *testing.T) {
	e := newEnv(t)
	img := t.TempDir()
	os.WriteFile(filepath.Join(img, "mvm.toml"), []byte("template = \"minimal\"\nname = \"mcp-e2e-named\"\n"), 0o644)
	os.WriteFile(filepath.Join(img, "data.txt"), []byte("from the built image\n"), 0o644)
	e.must("build", img)
	cwd := t.TempDir()
	os.MkdirAll(filepath.Join(cwd, "mcp-e2e-named"), 0o755)
	os.WriteFile(filepath.Join(cwd, "mcp-e2e-named", "mvm.toml"), []byte("template = \"minimal\"\nname = \"mcp-e2e-named\"\n"), 0o644)
	os.WriteFile(filepath.Join(cwd, "mcp-e2e-named", "data.txt"), []byte("from the server's directory\n"), 0o644)
	m := startMCPWith(t, e, false, cwd)
	sb := m.ok("sandbox_create", map[string]any{"template": "mcp-e2e-named"}, 3*time.Minute)["sandbox"].(string)
	if rd := m.ok("files_read", map[string]any{"sandbox": sb, "path": "/work/data.txt"}, 30*time.Second); rd["content"] != "from the built image\n" {
		t.Errorf("template mcp-e2e-named booted %q, not the built image", rd["content"])
	}
	m.closeAndWait()
	e.assertClean()
}
