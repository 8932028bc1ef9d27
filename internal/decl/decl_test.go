package decl

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/ir"
)

// issueDecl is the declaration of issue 12, verbatim.
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

func compileString(t *testing.T, name, src string) (*Result, error) {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return Compile(context.Background(), p)
}

func TestIssueDeclarationVerbatim(t *testing.T) {
	r, err := compileString(t, "app.py", issueDecl)
	if err != nil {
		t.Fatal(err)
	}
	w := r.Workload
	if w.Name != "worker" || w.Language != "python" || w.Source.Path != "." || w.Source.Include[0] != "**" {
		t.Fatalf("workload: %+v", w)
	}
	if w.Image.Kind != ir.ImageNixPackages || len(w.Image.Packages) != 1 || w.Image.Packages[0] != "python312" {
		t.Fatalf("image: %+v", w.Image)
	}
	if w.Network.Mode != "deny" || len(w.Network.Allow) != 0 {
		t.Fatalf("network: %+v", w.Network)
	}
	ep := w.Entrypoints
	if len(ep) != 1 || ep[0].Kind != "function" || ep[0].Module != "app" || ep[0].Function != "run" || ep[0].WorkingDir != "/app" {
		t.Fatalf("entrypoints: %+v", ep)
	}
	// python312 is refused at build (Realize), not at compile
	if _, err := ir.Realize(w.Image); err == nil || !strings.Contains(err.Error(), "python313") {
		t.Fatalf("realize: %v", err)
	}
	// the IR round-trips through the strict decoder with the same hash
	b, _ := w.Marshal()
	w2, err := ir.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	h1, _ := w.Hash()
	h2, _ := w2.Hash()
	if h1 != h2 {
		t.Fatal("hash differs after round trip")
	}
}

func TestFullPythonDeclaration(t *testing.T) {
	src := `import mvm
from mvm import secret as sec

@mvm.app(
    name="etl",
    source=mvm.local_path("src", include=["**/*.py"], exclude=["tests/**"]),
    image=mvm.python_image("3.13", packages=["curl"]),
    resources=mvm.resources(cpu_cores=2, memory_mb=1024, disk_mb=2048),
    network=mvm.network(mode="allow", allow=["api.example.com:443"], ports=[8080]),
    env={"MODE": "prod", "TOKEN": sec("api-token")},
    entrypoint=mvm.entrypoint_function(warm=True),
    before_start=[["python", "-c", "print(1)"]],
    hooks=mvm.hooks(before_stop=[["sync"]]),
)
async def handle(x: int) -> int:
    return x
`
	r, err := compileString(t, "job.py", src)
	if err != nil {
		t.Fatal(err)
	}
	w := r.Workload
	if w.Resources.CPUCores != 2 || w.Env["TOKEN"].Kind != "secret" || w.Env["TOKEN"].Name != "api-token" || w.Env["MODE"].Value != "prod" {
		t.Fatalf("%+v", w)
	}
	if e := w.Entrypoints[0]; e.Module != "job" || e.Function != "handle" || !e.Warm {
		t.Fatalf("entrypoint %+v", e)
	}
	if len(w.Hooks.BeforeStart) != 1 || len(w.Hooks.BeforeStop) != 1 || w.Network.Ports[0].Guest != 8080 {
		t.Fatalf("%+v", w)
	}
	if w.Image.Kind != "python_image" || w.Image.Version != "3.13" || w.Image.Packages[0] != "curl" {
		t.Fatalf("%+v", w.Image)
	}
}

func TestTypeScriptDeclaration(t *testing.T) {
	src := `import * as mvm from "mvm-sdk";

export const worker = mvm.app({
  name: "worker",
  source: mvm.local_path(".", { exclude: ["node_modules/**"] }),
  image: mvm.node_image("20"),
  network: mvm.network({ mode: "deny" }),
  env: { A: "1", K: mvm.secret("k") },
})(async (): Promise<string> => "ok");
`
	r, err := compileString(t, "worker.ts", src)
	if err != nil {
		t.Fatal(err)
	}
	w := r.Workload
	if w.Name != "worker" || w.Language != "node" || w.Image.Kind != "node_image" || w.Image.Version != "20" {
		t.Fatalf("%+v", w)
	}
	if e := w.Entrypoints[0]; e.Module != "worker" || e.Function != "worker" {
		t.Fatalf("%+v", e)
	}
	if w.Source.Exclude[0] != "node_modules/**" || w.Env["K"].Name != "k" {
		t.Fatalf("%+v", w)
	}
}

func TestExtractionErrors(t *testing.T) {
	cases := []struct {
		name, file, src, code string
		line, col             int
	}{
		{"variable", "a.py", "import mvm\nIMG = mvm.python_image('3.13')\n@mvm.app(image=IMG)\ndef f(): pass\n", ENonLiteral, 3, 16},
		{"fstring", "a.py", "import mvm\nv='1'\n@mvm.app(name=f\"w{v}\", image=mvm.python_image())\ndef f(): pass\n", ENonLiteral, 3, 15},
		{"expression", "a.py", "import mvm\n@mvm.app(image=mvm.python_image(), resources=mvm.resources(cpu_cores=1+1))\ndef f(): pass\n", ENonLiteral, 2, 70},
		{"unknown helper", "a.py", "import mvm, os\n@mvm.app(image=os.getenv('X'))\ndef f(): pass\n", EUnknownHelper, 2, 16},
		{"unknown mvm helper", "a.py", "import mvm\n@mvm.app(image=mvm.docker('x'))\ndef f(): pass\n", EUnknownHelper, 2, 16},
		{"two apps", "a.py", "import mvm\n@mvm.app(image=mvm.python_image())\ndef f(): pass\n@mvm.app(image=mvm.python_image())\ndef g(): pass\n", EMultipleApps, 4, 1},
		{"no app", "a.py", "import mvm\ndef f(): pass\n", ENoApp, 1, 1},
		{"class", "a.py", "import mvm\n@mvm.app(image=mvm.python_image())\nclass C: pass\n", EAppTarget, 2, 1},
		{"nested", "a.py", "import mvm\ndef outer():\n    @mvm.app(image=mvm.python_image())\n    def f(): pass\n", EAppTarget, 3, 5},
		{"unknown kwarg", "a.py", "import mvm\n@mvm.app(image=mvm.python_image(), colour='red')\ndef f(): pass\n", EUnknownArgument, 2, 43},
		{"helper kwarg", "a.py", "import mvm\n@mvm.app(image=mvm.python_image(flavour='x'))\ndef f(): pass\n", EUnknownArgument, 2, 41},
		{"no image", "a.py", "import mvm\n@mvm.app(name='x')\ndef f(): pass\n", EMissingArgument, 2, 1},
		{"wrong type", "a.py", "import mvm\n@mvm.app(image=mvm.python_image(), resources=mvm.resources(cpu_cores='2'))\ndef f(): pass\n", EBadArgument, 2, 70},
		{"splat", "a.py", "import mvm\n@mvm.app(image=mvm.nix_packages(*X))\ndef f(): pass\n", ENonLiteral, 2, 33},
		{"positional app", "a.py", "import mvm\n@mvm.app('w', image=mvm.python_image())\ndef f(): pass\n", ENonLiteral, 2, 10},
		{"syntax", "a.py", "import mvm\n@mvm.app(image=\ndef f(): pass\n", ESyntax, 0, 0},
		{"ts variable", "w.ts", "import * as mvm from 'mvm-sdk';\nconst img = mvm.node_image('20');\nexport const w = mvm.app({image: img})(async () => 'ok');\n", ENonLiteral, 3, 34},
		{"ts template", "w.ts", "import * as mvm from 'mvm-sdk';\nconst v = 1;\nexport const w = mvm.app({name: `w${v}`, image: mvm.node_image('20')})(async () => 'ok');\n", ENonLiteral, 3, 33},
		{"ts not exported", "w.ts", "import * as mvm from 'mvm-sdk';\nconst w = mvm.app({image: mvm.node_image('20')})(async () => 'ok');\n", EAppTarget, 2, 11},
		{"ts two", "w.ts", "import * as mvm from 'mvm-sdk';\nexport const a = mvm.app({image: mvm.node_image('20')})(async () => 1);\nexport const b = mvm.app({image: mvm.node_image('20')})(async () => 2);\n", EMultipleApps, 3, 18},
		{"ts spread", "w.ts", "import * as mvm from 'mvm-sdk';\nexport const a = mvm.app({...o, image: mvm.node_image('20')})(async () => 1);\n", ENonLiteral, 2, 27},
		{"ts unknown helper", "w.ts", "import * as mvm from 'mvm-sdk';\nexport const a = mvm.app({image: process.env.X})(async () => 1);\n", ENonLiteral, 2, 34},
		{"ts call helper", "w.ts", "import * as mvm from 'mvm-sdk';\nexport const a = mvm.app({image: load()})(async () => 1);\n", EUnknownHelper, 2, 34},
		{"bad module name", "my-app.py", "import mvm\n@mvm.app(image=mvm.python_image())\ndef f(): pass\n", EBadArgument, 2, 1},
	}
	for _, c := range cases {
		_, err := compileString(t, c.file, c.src)
		var de *Error
		if !errors.As(err, &de) {
			t.Errorf("%s: want *Error %s, got %v", c.name, c.code, err)
			continue
		}
		if de.Code != c.code || (c.line != 0 && (de.Line != c.line || de.Col != c.col)) {
			t.Errorf("%s: want %s at %d:%d, got %s at %d:%d: %v", c.name, c.code, c.line, c.col, de.Code, de.Line, de.Col, err)
		}
		if !strings.Contains(err.Error(), c.file) || !strings.Contains(err.Error(), c.code) {
			t.Errorf("%s: message lacks file or code: %v", c.name, err)
		}
		if (de.Code == ENonLiteral || de.Code == EUnknownHelper) && de.Allowed == "" {
			t.Errorf("%s: no allowed-instead hint: %v", c.name, err)
		}
	}
	// IR validation problems come back with their E_* codes
	_, err := compileString(t, "a.py", "import mvm\n@mvm.app(name='Bad_Name', image=mvm.python_image())\ndef f(): pass\n")
	var ie *ir.Error
	if !errors.As(err, &ie) || ie.Code != ir.EInvalidID {
		t.Errorf("bad name: %v", err)
	}
}

// A module whose top level has side effects compiles, and nothing of it
// runs: the file it would write never appears.
func TestCompileNeverExecutes(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "pwned")
	py := `import sys
open(` + "`" + `MARK` + "`" + `, "w").write("ran")
sys.exit(3)
while True:
    pass
import mvm
@mvm.app(name="worker", image=mvm.python_image("3.13"))
def run() -> str:
    return "ok"
`
	py = strings.ReplaceAll(py, "`MARK`", `"`+marker+`"`)
	ts := `import * as mvm from "mvm-sdk";
import { writeFileSync } from "node:fs";
writeFileSync("` + marker + `", "ran");
process.exit(3);
while (true) {}
export const worker = mvm.app({ image: mvm.node_image("20") })(async () => "ok");
`
	for name, src := range map[string]string{"app.py": py, "app.ts": ts} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(src), 0o644)
		if _, err := Compile(context.Background(), p); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("the module ran: %v", err)
	}
	// the same module really does write the file when run (the test is
	// meaningful), with python3 where the host has it
	if py3, err := exec.LookPath("python3"); err == nil {
		exec.Command(py3, filepath.Join(dir, "app.py")).Run()
		if _, err := os.Stat(marker); err != nil {
			t.Fatalf("running the module did not write the marker: %v", err)
		}
	}
}

func TestCompileDir(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "util.py"), []byte("def helper(): return 1\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "app.py"), []byte(issueDecl), 0o644)
	r, err := Compile(context.Background(), dir)
	if err != nil || r.Workload.Name != "worker" {
		t.Fatalf("%v %+v", err, r)
	}
	os.WriteFile(filepath.Join(dir, "other.py"), []byte(issueDecl), 0o644)
	_, err = Compile(context.Background(), dir)
	var de *Error
	if !errors.As(err, &de) || de.Code != EMultipleApps {
		t.Fatalf("two apps in a dir: %v", err)
	}
	empty := t.TempDir()
	if _, err := Compile(context.Background(), empty); !errors.As(err, &de) || de.Code != ENoApp {
		t.Fatalf("empty dir: %v", err)
	}
}

// TestOCIImageDeclaration: mvm.oci_image(REF) in Python and TypeScript
// (ociImage too) lowers to image kind oci_image with the reference as
// written; a name that is not a reference is E_IMAGE, a missing one
// E_MISSING_ARGUMENT.
func TestOCIImageDeclaration(t *testing.T) {
	for _, c := range []struct{ file, src string }{
		{"app.py", "import mvm\n@mvm.app(name='py', image=mvm.oci_image('python:3.12-slim'))\ndef run(): pass\n"},
		{"app.py", "from mvm import oci_image, app\n@app(name='py', image=oci_image(ref='python:3.12-slim'))\ndef run(): pass\n"},
		{"w.ts", "import * as mvm from 'mvm-sdk';\nexport const w = mvm.app({name: 'py', image: mvm.oci_image('python:3.12-slim')})(async () => 1);\n"},
		{"w.ts", "import * as mvm from 'mvm-sdk';\nexport const w = mvm.app({name: 'py', image: mvm.ociImage('python:3.12-slim')})(async () => 1);\n"},
	} {
		r, err := compileString(t, c.file, c.src)
		if err != nil {
			t.Fatalf("%s: %v", c.src, err)
		}
		if im := r.Workload.Image; im.Kind != ir.ImageOCI || im.Ref != "python:3.12-slim" {
			t.Fatalf("%s: image %+v", c.src, im)
		}
	}
	_, err := compileString(t, "a.py", "import mvm\n@mvm.app(image=mvm.oci_image('python-3.12'))\ndef f(): pass\n")
	var ie *ir.Error
	if !errors.As(err, &ie) || ie.Code != ir.EImage || !strings.Contains(err.Error(), "python:3.12-slim") {
		t.Errorf("not a reference: %v", err)
	}
	_, err = compileString(t, "a.py", "import mvm\n@mvm.app(image=mvm.oci_image())\ndef f(): pass\n")
	var de *Error
	if !errors.As(err, &de) || de.Code != EMissingArgument {
		t.Errorf("no reference: %v", err)
	}
}
