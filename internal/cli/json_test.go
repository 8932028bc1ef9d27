package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/sandbox/sandboxtest"
)

// ndjson decodes every line of out as one JSON object.
func ndjson(t *testing.T, out []byte) []map[string]any {
	t.Helper()
	var objs []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var o map[string]any
		if err := json.Unmarshal(sc.Bytes(), &o); err != nil {
			t.Fatalf("line %q is not a JSON object: %v", sc.Text(), err)
		}
		objs = append(objs, o)
	}
	return objs
}

// TestLsJSONNetworkAndPorts: ls --json carries the network mode and the
// published ports (the shape of `port --json`); inspect too.
func TestLsJSONNetworkAndPorts(t *testing.T) {
	app, out, errb := testApp(t)
	sandboxtest.Make(t, app.Dirs.State, "web", sandboxtest.Options{Network: "allowlist",
		Ports: []netpolicy.Publish{{HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80}}})
	sandboxtest.Make(t, app.Dirs.State, "quiet", sandboxtest.Options{})
	if code := run(app, []string{"ls", "-a", "--json"}); code != 0 {
		t.Fatalf("exit %d: %s", code, errb)
	}
	var rows []map[string]any
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil || len(rows) != 2 {
		t.Fatalf("%v: %s", err, out)
	}
	byName := map[string]map[string]any{}
	for _, r := range rows {
		byName[r["name"].(string)] = r
	}
	web, quiet := byName["web"], byName["quiet"]
	ports, _ := web["ports"].([]any)
	if web["network"] != "allowlist" || len(ports) != 1 {
		t.Fatalf("web: %v", web)
	}
	p := ports[0].(map[string]any)
	if p["host_addr"] != "127.0.0.1" || p["host_port"] != float64(8080) || p["guest_port"] != float64(80) || p["proto"] != "tcp" {
		t.Errorf("port %v", p)
	}
	if quiet["network"] != "none" {
		t.Errorf("quiet: %v", quiet)
	}
	if qp, ok := quiet["ports"].([]any); !ok || len(qp) != 0 {
		t.Errorf("quiet ports must be an empty array: %v", quiet["ports"])
	}
	for _, k := range []string{"name", "id", "state", "image", "image_digest", "image_profile", "run_profile", "backend", "cpus", "memory_mib", "created", "expires", "transient"} {
		if _, ok := web[k]; !ok {
			t.Errorf("ls --json lost %q", k)
		}
	}
	app2, out2, _ := testApp(t)
	app2.Dirs = app.Dirs
	if code := run(app2, []string{"inspect", "web"}); code != 0 || !strings.Contains(out2.String(), `"network":"allowlist"`) {
		t.Errorf("inspect: %d %s", code, out2)
	}
}

// TestDownJSON: one NDJSON line per sandbox, removed or with its error;
// the exit code is the worst.
func TestDownJSON(t *testing.T) {
	app, out, errb := testApp(t)
	sandboxtest.Make(t, app.Dirs.State, "old", sandboxtest.Options{})
	code := run(app, []string{"down", "--json", "old", "nosuch"})
	if code != ExitNotFound {
		t.Fatalf("exit %d, want %d: %s", code, ExitNotFound, errb)
	}
	objs := ndjson(t, out.Bytes())
	if len(objs) != 2 {
		t.Fatalf("%d lines: %s", len(objs), out)
	}
	if objs[0]["sandbox"] != "old" || objs[0]["removed"] != true || objs[0]["schema_version"] != float64(1) {
		t.Errorf("first: %v", objs[0])
	}
	e, _ := objs[1]["error"].(map[string]any)
	if objs[1]["sandbox"] != "nosuch" || objs[1]["removed"] != false || e["kind"] != "not_found" || e["reason"] != "sandbox" || e["exit_code"] != float64(ExitNotFound) {
		t.Errorf("second: %v", objs[1])
	}
	if !strings.Contains(errb.String(), "nosuch") {
		t.Errorf("stderr %q", errb)
	}
	if _, err := os.Stat(filepath.Join(app.Dirs.State, "names", "old")); !os.IsNotExist(err) {
		t.Errorf("the name of a removed sandbox is still reserved: %v", err)
	}
}

// TestWaitJSON: wait's failures come from the runtime's kinds: 65 for a
// failed sandbox, 75 when not ready in time, 3 for no such sandbox, each
// with the error object under --json.
func TestWaitJSON(t *testing.T) {
	cases := []struct {
		name   string
		opts   *sandboxtest.Options
		args   []string
		code   int
		kind   string
		reason string
	}{
		{"nosuch", nil, nil, ExitNotFound, "not_found", "sandbox"},
		{"dead", &sandboxtest.Options{Status: sandbox.Failed, Reason: "qemu signal: killed"}, nil, ExitFailed, "guest", "failed"},
		{"slow", &sandboxtest.Options{Status: sandbox.Starting}, []string{"--timeout", "200ms"}, ExitNotReady, "timeout", "not_ready"},
	}
	for _, c := range cases {
		app, out, errb := testApp(t)
		if c.opts != nil {
			o := *c.opts
			if o.Status == sandbox.Starting {
				o.Supervisor = runtime.SupervisorCommand
			}
			sandboxtest.Make(t, app.Dirs.State, c.name, o)
		}
		code := run(app, append([]string{"wait", c.name, "--json"}, c.args...))
		if code != c.code {
			t.Errorf("%s: exit %d, want %d (%s)", c.name, code, c.code, errb)
			continue
		}
		objs := ndjson(t, out.Bytes())
		if len(objs) != 1 {
			t.Errorf("%s: %d objects: %s", c.name, len(objs), out)
			continue
		}
		e, _ := objs[0]["error"].(map[string]any)
		if e["kind"] != c.kind || e["reason"] != c.reason {
			t.Errorf("%s: error %v", c.name, e)
		}
	}
}

// TestPauseResumeJSONErrors: no such sandbox, as a JSON error, exit 3.
func TestPauseResumeJSONErrors(t *testing.T) {
	for _, op := range []string{"pause", "resume"} {
		app, out, _ := testApp(t)
		if code := run(app, []string{op, "nosuch", "--json"}); code != ExitNotFound || !strings.Contains(out.String(), `"kind":"not_found"`) {
			t.Errorf("%s: exit %d, stdout %s", op, code, out)
		}
	}
}

// TestLogsJSON: logs --json prints one {"line"} object per console line,
// the last one even without a newline; -n keeps the last N.
func TestLogsJSON(t *testing.T) {
	app, out, errb := testApp(t)
	id := sandboxtest.Make(t, app.Dirs.State, "box", sandboxtest.Options{})
	dir := sandbox.Layout{Root: app.Dirs.State}.Dir(id)
	os.WriteFile(filepath.Join(dir, "console.log"), []byte("boot\r\nagent: ready\n\x1b[31mred\xff\nlast"), 0o600)
	if code := run(app, []string{"logs", "box", "--json"}); code != 0 {
		t.Fatalf("exit %d: %s", code, errb)
	}
	objs := ndjson(t, out.Bytes())
	var lines []string
	for _, o := range objs {
		lines = append(lines, o["line"].(string))
	}
	want := []string{"boot", "agent: ready", "\x1b[31mred\uFFFD", "last"}
	if strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Errorf("lines %q, want %q", lines, want)
	}
	out.Reset()
	if code := run(app, []string{"logs", "box", "--json", "-n", "1"}); code != 0 || len(ndjson(t, out.Bytes())) != 1 {
		t.Errorf("-n 1: %d %s", code, out)
	}
}

func TestNDJSONLinesCapsALine(t *testing.T) {
	var out bytes.Buffer
	n := &ndjsonLines{w: &out}
	n.Write(bytes.Repeat([]byte("a"), maxLogLine*2+10))
	n.Write([]byte("\nb\n"))
	n.Flush()
	objs := ndjson(t, out.Bytes())
	if len(objs) != 4 || len(objs[0]["line"].(string)) != maxLogLine || objs[2]["line"] != strings.Repeat("a", 10) || objs[3]["line"] != "b" {
		t.Errorf("%d objects", len(objs))
	}
}

// TestImagesThroughRuntime: images and image rm go through the runtime;
// an empty cache lists [], an unknown image is not removed (exit 1, the
// errors array names it).
func TestImagesThroughRuntime(t *testing.T) {
	app, out, errb := testApp(t)
	if code := run(app, []string{"images", "--json"}); code != 0 || strings.TrimSpace(out.String()) != `{"images":[]}` {
		t.Fatalf("images: %d %q %s", code, out, errb)
	}
	out.Reset()
	code := run(app, []string{"image", "rm", "--json", "abcd1234"})
	var obj struct {
		Removed []string
		Errors  []struct{ ID, Error string }
	}
	if err := json.Unmarshal(out.Bytes(), &obj); err != nil || code != 1 || len(obj.Removed) != 0 || len(obj.Errors) != 1 || obj.Errors[0].ID != "abcd1234" {
		t.Fatalf("image rm: %d %v %s", code, err, out)
	}
}

// TestBuildUsageErrors: build refuses a directory without mvm.toml with a
// usage error (exit 2) before the runtime is asked.
func TestBuildUsageErrors(t *testing.T) {
	app, _, errb := testApp(t)
	if code := run(app, []string{"build", t.TempDir()}); code != ExitUsage || !strings.Contains(errb.String(), "mvm.toml") {
		t.Fatalf("exit %d: %s", code, errb)
	}
}

// TestJSONFailuresPrintOneErrorObject: every --json command that fails
// (here: on a sandbox, file or receipt that does not exist) prints JSON
// lines only, exactly one of them with the error, and a non-zero exit.
func TestJSONFailuresPrintOneErrorObject(t *testing.T) {
	cases := [][]string{
		{"audit", "show", "99:0000"},
		{"boot-report", "nosuch"},
		{"cp", "nosuch:/etc/hostname", "/tmp/x"},
		{"down", "nosuch"},
		{"exec", "nosuch", "--", "true"},
		{"forward", "nosuch", "-p", "8080"},
		{"fs", "ls", "nosuch", "/"},
		{"fs", "stat", "nosuch", "/"},
		{"fs", "write", "nosuch", "/x", "--content", "y"},
		{"image", "rm", "abcd1234"},
		{"logs", "nosuch"},
		{"pause", "nosuch"},
		{"port", "nosuch"},
		{"proc", "ls", "nosuch"},
		{"proc", "start", "nosuch", "--", "true"},
		{"receipt", "verify", "/nonexistent/receipt.json"},
		{"resume", "nosuch"},
		{"stats", "nosuch"},
		{"wait", "nosuch"},
	}
	for _, args := range cases {
		app, out, errb := testApp(t)
		argv := append([]string{}, args...)
		for i, a := range argv {
			if a == "--" {
				argv = append(append(append([]string{}, argv[:i]...), "--json"), argv[i:]...)
				break
			}
		}
		if len(argv) == len(args) {
			argv = append(argv, "--json")
		}
		code := run(app, argv)
		if code == 0 {
			t.Errorf("%v: exit 0", args)
			continue
		}
		objs := ndjson(t, out.Bytes())
		withError := 0
		for _, o := range objs {
			if _, ok := o["error"]; ok {
				withError++
			}
			if es, ok := o["errors"].([]any); ok && len(es) > 0 {
				withError++
			}
		}
		if withError != 1 {
			t.Errorf("%v: exit %d, %d error objects in %q (stderr %q)", args, code, withError, out, errb)
		}
	}
}

// TestExecJSONShape: the documented keys of `exec --json`, text and base64
// streams, truncation, and the receipt id (the SDKs' receipt_id was always
// null: exec --json did not print it).
func TestExecJSONShape(t *testing.T) {
	out, errc := &capture{limit: 4}, &capture{limit: 16}
	out.Write([]byte("hello world"))
	errc.Write([]byte{0xff, 0x00})
	res := &runtime.ExecResult{AuditID: "5:3d41e0c1183d9b2a", ReceiptID: "0b7f3c52-9a1e-4d6b-8f20-5c3e7a91d4b8"}
	obj := execJSON("box", 3, false, 1500*time.Millisecond, res, out, errc)
	b, _ := json.Marshal(obj)
	var got map[string]any
	json.Unmarshal(b, &got)
	want := map[string]any{"schema_version": float64(1), "sandbox": "box", "exit_code": float64(3), "timed_out": false,
		"duration_ms": float64(1500), "audit_id": "5:3d41e0c1183d9b2a", "receipt_id": "0b7f3c52-9a1e-4d6b-8f20-5c3e7a91d4b8",
		"stdout": "hell", "stdout_bytes": float64(11), "stdout_truncated": true,
		"stderr_base64": "/wA=", "stderr_bytes": float64(2), "stderr_truncated": false}
	if len(got) != len(want) {
		t.Errorf("keys %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	// Timed out before the agent answered: no ids.
	timed := execJSON("box", ExitTimeout, true, time.Second, nil, &capture{limit: 1}, &capture{limit: 1})
	if _, ok := timed["receipt_id"]; ok || timed["timed_out"] != true || timed["exit_code"] != ExitTimeout {
		t.Errorf("timed out: %v", timed)
	}
}
