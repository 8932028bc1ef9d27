package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// issueDecl is issue 12's declaration, verbatim.
const issueDecl = `import mvm
@mvm.app(
    name="worker",
    source=mvm.local_path("."),
    image=mvm.nix_packages(["python312"]),
    network=mvm.network(mode="deny"),
)
def run() -> str:
    return "ok"
`

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The declaration of the issue compiles (without running the module) and
// its build fails with the python312 message; the python313 variant is
// refused unapproved under MVM_REQUIRE_APPROVED=1, then approved, booted
// and invoked; its receipt and audit entries carry the IR hash and the
// chain verifies.
func TestDeclarationPythonEndToEnd(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "verbatim", "app.py"), issueDecl)
	c := e.must("compile", filepath.Join(dir, "verbatim", "app.py"), "--json")
	var comp struct {
		OK   bool   `json:"ok"`
		Hash string `json:"ir_sha256"`
		IR   struct {
			Name  string `json:"name"`
			Image struct {
				Kind     string   `json:"kind"`
				Packages []string `json:"packages"`
			} `json:"image"`
			Network struct {
				Mode string `json:"mode"`
			} `json:"network"`
			Entrypoints []struct {
				Kind, Module, Function string
			} `json:"entrypoints"`
		} `json:"ir"`
	}
	if err := json.Unmarshal([]byte(c.stdout), &comp); err != nil || !comp.OK || len(comp.Hash) != 64 {
		t.Fatalf("compile --json: %v %s", err, c)
	}
	if comp.IR.Name != "worker" || comp.IR.Image.Kind != "nix_packages" || comp.IR.Image.Packages[0] != "python312" || comp.IR.Network.Mode != "deny" ||
		comp.IR.Entrypoints[0].Module != "app" || comp.IR.Entrypoints[0].Function != "run" {
		t.Fatalf("IR: %+v", comp.IR)
	}
	b := e.expect(2, "build", filepath.Join(dir, "verbatim", "app.py"))
	for _, want := range []string{"E_IMAGE_UNAVAILABLE", "python312", "python311, python313", `mvm.python_image("3.13")`} {
		if !strings.Contains(b.stderr, want) {
			t.Errorf("build python312: stderr lacks %q: %s", want, b)
		}
	}

	// the python313 variant
	src := filepath.Join(dir, "app")
	writeFile(t, filepath.Join(src, "app.py"), strings.Replace(issueDecl, "python312", "python313", 1))
	irPath := filepath.Join(dir, "worker.ir.json")
	cj := e.must("compile", filepath.Join(src, "app.py"), "--out", irPath, "--json")
	var outj struct {
		Hash string `json:"ir_sha256"`
	}
	json.Unmarshal([]byte(cj.stdout), &outj)
	hash := outj.Hash
	strict := *e
	strict.extra = append(append([]string{}, e.extra...), "MVM_REQUIRE_APPROVED=1")
	ref := strict.expect(126, "up", irPath)
	if !strings.Contains(ref.stderr, "mvmctl approve "+irPath) || !strings.Contains(ref.stderr, "not approved") {
		t.Errorf("refusal does not name the approve command: %s", ref)
	}
	if countKind(t, e, "workload.refused") != 1 {
		t.Error("refusal not audited")
	}
	if len(e.sandboxDirs()) != 0 {
		t.Errorf("a refused up left state: %v", e.sandboxDirs())
	}
	e.must("approve", irPath)
	if l := e.must("approvals", "--json"); !strings.Contains(l.stdout, hash) || !strings.Contains(l.stdout, `"valid":true`) {
		t.Errorf("approvals: %s", l)
	}
	strict.must("up", irPath)
	defer e.run("down", "worker")
	inv := e.must("invoke", "worker", "--receipt", filepath.Join(dir, "r.json"))
	if strings.TrimSpace(inv.stdout) != `"ok"` {
		t.Fatalf("invoke: %s", inv)
	}
	rb, err := os.ReadFile(filepath.Join(dir, "r.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Payload struct {
			IR string `json:"workload_ir_sha256"`
		} `json:"payload"`
	}
	json.Unmarshal(rb, &rec)
	if rec.Payload.IR != hash || hash == "" {
		t.Errorf("receipt IR hash %q, want %q", rec.Payload.IR, hash)
	}
	e.must("receipt", "verify", filepath.Join(dir, "r.json"))
	// deny = no NIC: only lo in the guest
	if x := e.must("exec", "worker", "--", "ls", "/sys/class/net"); strings.TrimSpace(x.stdout) != "lo" {
		t.Errorf("network deny has interfaces: %q", x.stdout)
	}
	// the source landed at /app
	if x := e.must("exec", "worker", "--", "cat", "/app/app.py"); !strings.Contains(x.stdout, "python313") {
		t.Errorf("/app/app.py: %s", x)
	}
	e.must("audit", "verify")
	chain, _ := os.ReadFile(filepath.Join(e.data, "audit", "chain.jsonl"))
	for _, kind := range []string{"plan.admitted", "exec.started", "exec.finished"} {
		found := false
		for _, line := range strings.Split(string(chain), "\n") {
			if strings.Contains(line, `"kind":"`+kind+`"`) && strings.Contains(line, hash) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %s audit entry carries the IR hash", kind)
		}
	}
	// a changed declaration has another hash and is not approved
	writeFile(t, filepath.Join(src, "app.py"), strings.Replace(issueDecl, `"python312"`, `"python313", "jq"`, 1))
	strict.expect(126, "up", filepath.Join(src, "app.py"), "--name", "changed")
	e.must("down", "worker")
}

// A warm worker keeps one interpreter between calls: exceptions come back
// structured, a crash is reported to the call that caused it and the
// worker restarts, and 16 MiB caps hold both ways.
func TestDeclarationWarmWorker(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "svc.py"), `import os
import mvm

CALLS = []

@mvm.app(
    name="svc",
    image=mvm.python_image("3.13"),
    entrypoints=[
        mvm.entrypoint_function(warm=True),
        mvm.entrypoint(command=["sh", "-c", "echo started > /tmp/cmd-started; exec sleep 100000"]),
    ],
    before_start=[["sh", "-c", "echo before > /tmp/hook-before"]],
    hooks=mvm.hooks(after_start=[["sh", "-c", "echo after > /tmp/hook-after"]],
                    before_stop=[["sh", "-c", "echo stop > /tmp/hook-stop"]]),
)
def handle(kind="ok", n=0):
    CALLS.append(kind)
    if kind == "raise":
        raise ValueError("bad input %d" % n)
    if kind == "crash":
        os._exit(3)
    if kind == "big":
        return "x" * (17 << 20)
    return {"calls": len(CALLS), "pid": os.getpid()}
`)
	e.must("up", filepath.Join(dir, "svc.py"))
	defer e.run("down", "svc")
	// hooks ran around the start, and the command entrypoint runs in the
	// background
	if r := e.must("exec", "svc", "--", "cat", "/tmp/hook-before", "/tmp/hook-after"); r.stdout != "before\nafter\n" {
		t.Errorf("hooks: %s", r)
	}
	waitFor(t, "the command entrypoint to start", 30*time.Second, func() bool {
		return e.run("exec", "svc", "--", "test", "-e", "/tmp/cmd-started").code == 0
	})
	call := func(code int, input string) result {
		return e.expect(code, "invoke", "svc", "--json", "--input", input)
	}
	var r1, r2 struct {
		OK     bool `json:"ok"`
		Warm   bool `json:"warm"`
		Result struct {
			Calls, Pid int
		} `json:"result"`
	}
	json.Unmarshal([]byte(call(0, `{}`).stdout), &r1)
	json.Unmarshal([]byte(call(0, `{}`).stdout), &r2)
	if !r1.OK || !r1.Warm || r2.Result.Calls != r1.Result.Calls+1 || r1.Result.Pid != r2.Result.Pid {
		t.Fatalf("the worker is not kept warm: %+v %+v", r1, r2)
	}
	rr := call(1, `{"kind": "raise", "n": 7}`)
	var re struct {
		OK    bool `json:"ok"`
		Error struct {
			Type, Message, Traceback string
		} `json:"error"`
	}
	json.Unmarshal([]byte(rr.stdout), &re)
	if re.OK || re.Error.Type != "ValueError" || re.Error.Message != "bad input 7" || !strings.Contains(re.Error.Traceback, "svc.py") {
		t.Errorf("exception: %s", rr)
	}
	cr := call(125, `{"kind": "crash"}`)
	if !strings.Contains(cr.stdout+cr.stderr, "crashed") {
		t.Errorf("crash: %s", cr)
	}
	var r3 struct {
		OK     bool                     `json:"ok"`
		Result struct{ Calls, Pid int } `json:"result"`
	}
	json.Unmarshal([]byte(call(0, `{}`).stdout), &r3)
	if !r3.OK || r3.Result.Pid == r1.Result.Pid || r3.Result.Calls != 1 {
		t.Errorf("after a crash the next call is served by a new worker: %+v", r3)
	}
	if big := e.expect(8, "invoke", "svc", "--input", `{"kind": "big"}`); !strings.Contains(big.stderr, "16777216") {
		t.Errorf("oversized result: %s", big)
	}
	huge := strings.Repeat("a", 17<<20)
	in := filepath.Join(dir, "huge.json")
	writeFile(t, in, `"`+huge+`"`)
	f, _ := os.Open(in)
	defer f.Close()
	if r := e.runIn(f, "invoke", "svc", "--input", "-"); r.code != 8 || !strings.Contains(r.stderr, "16777216") {
		t.Errorf("oversized input: %s", r)
	}
	e.must("audit", "verify")
	// before_stop runs at down, in the guest (an exec recorded in the chain)
	before := countKind(t, e, "exec.finished")
	e.must("down", "svc")
	if after := countKind(t, e, "exec.finished"); after != before+1 {
		t.Errorf("before_stop hook did not run at down: exec.finished %d -> %d", before, after)
	}
}

// The TypeScript equivalent on the node image: the declaration is read
// from worker.ts, the code runs from tsc's worker.js.
func TestDeclarationTypeScriptEndToEnd(t *testing.T) {
	tsc, _ := filepath.Abs("../../sdk/typescript/node_modules/.bin/tsc")
	if _, err := os.Stat(tsc); err != nil {
		t.Fatalf("tsc is needed (scripts/test.sh runs npm ci in sdk/typescript): %v", err)
	}
	e := newEnv(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "worker.ts"), `import * as mvm from "mvm-sdk";

export const worker = mvm.app({
  name: "tsworker",
  source: mvm.local_path(".", { include: ["*.js"] }),
  image: mvm.node_image("20"),
  network: mvm.network({ mode: "deny" }),
})(async (who?: string): Promise<string> => (who ? "ok " + who : "ok"));
`)
	writeFile(t, filepath.Join(dir, "mvm-sdk.d.ts"), `declare module "mvm-sdk" {
  export function app(o: object): <F>(f: F) => F;
  export function local_path(p: string, o?: object): object;
  export function node_image(v: string): object;
  export function network(o: object): object;
}
`)
	cmd := exec.Command(tsc, "--target", "es2022", "--module", "es2022", "--moduleResolution", "bundler", "--skipLibCheck", "worker.ts", "mvm-sdk.d.ts")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tsc: %v\n%s", err, out)
	}
	e.must("compile", filepath.Join(dir, "worker.ts"))
	e.must("up", filepath.Join(dir, "worker.ts"))
	defer e.run("down", "tsworker")
	if r := e.must("invoke", "tsworker"); strings.TrimSpace(r.stdout) != `"ok"` {
		t.Fatalf("invoke: %s", r)
	}
	if r := e.must("invoke", filepath.Join(dir, "worker.ts"), "--input", `["mvm"]`); strings.TrimSpace(r.stdout) != `"ok mvm"` {
		t.Fatalf("invoke with args: %s", r)
	}
	e.must("audit", "verify")
	e.must("down", "tsworker")
}

// run --mode record runs an SDK script without booting and prints the IR
// of its recording; --mode live runs it against real microVMs through this
// mvmctl.
func TestRunScriptModes(t *testing.T) {
	e := newEnv(t)
	sdk, _ := filepath.Abs("../../sdk/python/src")
	e.extra = append(e.extra, "PYTHONPATH="+sdk)
	dir := t.TempDir()
	rec := filepath.Join(dir, "rec.py")
	writeFile(t, rec, `import mvm
sb = mvm.Sandbox.create("python-3.13", workload_id="etl")
sb.files.write("/app/main.py", "print('hi')\n")
sb.commands.start(["python3", "/app/main.py"])
print("script output goes to stderr")
`)
	r := e.must("run", "--mode", "record", rec)
	var ir struct {
		Name        string `json:"name"`
		Image       struct{ Kind, Name string }
		Entrypoints []struct {
			Kind    string
			Command []string
		}
		Files []struct{ Path string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &ir); err != nil {
		t.Fatalf("record mode did not print IR: %v %s", err, r)
	}
	if ir.Name != "etl" || ir.Image.Name != "python-3.13" || ir.Entrypoints[0].Command[1] != "/app/main.py" || ir.Files[0].Path != "/app/main.py" {
		t.Errorf("IR: %+v", ir)
	}
	if !strings.Contains(r.stderr, "script output goes to stderr") || len(e.sandboxDirs()) != 0 {
		t.Errorf("record mode: %s (sandboxes %v)", r, e.sandboxDirs())
	}
	live := filepath.Join(dir, "live.py")
	writeFile(t, live, `import mvm
with mvm.Sandbox.create("minimal", workload_id="live") as sb:
    print(sb.commands.run(["echo", "from-the-guest"]).stdout, end="")
`)
	if r := e.must("run", "--mode", "live", live); strings.TrimSpace(r.stdout) != "from-the-guest" {
		t.Errorf("live mode: %s", r)
	}
	e.expect(2, "run", "--mode", "nope", live)
	e.assertClean()
}

// network(mode="allow") goes to the host-enforced allowlist: a NIC, the
// allowlist in the signed plan, and only once the declaration is approved
// (or the operator consents).
func TestDeclarationNetworkAllow(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "net.py")
	writeFile(t, p, `import mvm
@mvm.app(name="netw", image=mvm.python_image("3.13"),
         network=mvm.network(mode="allow", allow=["pypi.org:443"]),
         resources=mvm.resources(cpu_cores=1, memory_mb=384))
def run() -> str:
    return "ok"
`)
	ref := e.expect(126, "up", p)
	if !strings.Contains(ref.stderr, "pypi.org:443") || !strings.Contains(ref.stderr, "mvmctl approve") || len(e.sandboxDirs()) != 0 {
		t.Fatalf("unapproved egress: %s (state %v)", ref, e.sandboxDirs())
	}
	e.must("approve", p)
	e.must("up", p)
	defer e.run("down", "netw")
	if x := e.must("exec", "netw", "--", "ls", "/sys/class/net"); !strings.Contains(x.stdout, "eth0") {
		t.Errorf("allow mode has no NIC: %q", x.stdout)
	}
	ls := e.must("ls", "--json")
	if !strings.Contains(ls.stdout, "allowlist") {
		t.Errorf("ls does not show the allowlist: %s", ls.stdout)
	}
	matches, _ := filepath.Glob(filepath.Join(e.state, "sb", "*", "plan.json"))
	if len(matches) != 1 {
		t.Fatalf("plans: %v", matches)
	}
	plan, _ := os.ReadFile(matches[0])
	if !strings.Contains(string(plan), "pypi.org:443") || !strings.Contains(string(plan), `"memory_mib":384`) || !strings.Contains(string(plan), "workload_ir_sha256") {
		t.Errorf("signed plan lacks the allowlist, resources or IR hash: %s", plan)
	}
	if r := e.must("invoke", "netw"); strings.TrimSpace(r.stdout) != `"ok"` {
		t.Errorf("invoke: %s", r)
	}
	e.must("down", "netw")
}
