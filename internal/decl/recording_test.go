package decl

import (
	"context"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// A recording written by the real Python SDK in record mode compiles: the
// template becomes the image, file writes files, the last started command
// the entrypoint, earlier ones before_start hooks.
func TestCompilePythonSDKRecording(t *testing.T) {
	py3, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed (scripts/test.sh installs it)")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "s.py")
	os.WriteFile(script, []byte(`import mvm
sb = mvm.Sandbox.create("python-3.13", workload_id="etl")
sb.files.write("/app/main.py", "print('hi')\n")
sb.commands.start(["python3", "-c", "print('setup')"])
sb.commands.start(["python3", "/app/main.py"])
sb.kill()
`), 0o644)
	out := filepath.Join(dir, "rec.json")
	src, _ := filepath.Abs("../../sdk/python/src")
	cmd := exec.Command(py3, script)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+src, "MVM_SDK_MODE=record", "MVM_SDK_OUT_PATH="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("record: %v\n%s", err, b)
	}
	r, err := Compile(context.Background(), out)
	if err != nil {
		t.Fatal(err)
	}
	w := r.Workload
	if w.Name != "etl" || w.Image.Kind != "template" || w.Image.Name != "python-3.13" {
		t.Fatalf("%+v", w)
	}
	if len(w.Files) != 1 || w.Files[0].Path != "/app/main.py" || w.Files[0].ContentBase64 != base64.StdEncoding.EncodeToString([]byte("print('hi')\n")) {
		t.Fatalf("files %+v", w.Files)
	}
	if e := w.Entrypoints[0]; e.Kind != "command" || e.Command[1] != "/app/main.py" {
		t.Fatalf("entrypoint %+v", e)
	}
	if len(w.Hooks.BeforeStart) != 1 || w.Hooks.BeforeStart[0][2] != "print('setup')" {
		t.Fatalf("hooks %+v", w.Hooks)
	}
}

func TestRecordingErrors(t *testing.T) {
	for name, doc := range map[string]string{
		"not json":   `{`,
		"version":    `{"schema_version": 9, "workload_id": "x", "create": {"template": "python"}, "ops": []}`,
		"no command": `{"schema_version": 1, "workload_id": "x", "create": {"template": "python"}, "ops": []}`,
		"build dir":  `{"schema_version": 1, "workload_id": "x", "create": {"build_dir": "/x"}, "ops": []}`,
		"unknown op": `{"schema_version": 1, "workload_id": "x", "create": {"template": "python"}, "ops": [{"kind": "snapshot"}]}`,
		"bad b64":    `{"schema_version": 1, "workload_id": "x", "create": {"template": "python"}, "ops": [{"kind": "files_write", "path": "/a", "bytes_b64": "!"}]}`,
	} {
		_, err := compileString(t, "r.json", doc)
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
