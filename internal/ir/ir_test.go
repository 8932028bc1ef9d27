package ir

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/mvm-sandbox/mvm/schema"
)

const good = `{
  "schema_version": 1,
  "name": "worker",
  "language": "python",
  "source": {"kind": "local_path", "path": "."},
  "image": {"kind": "nix_packages", "packages": ["python312"]},
  "network": {"mode": "deny"},
  "entrypoints": [{"kind": "function", "module": "app", "function": "run"}]
}`

// mutate applies a JSON merge-ish edit: set key path (dotted) to raw JSON.
func mutate(t *testing.T, doc string, edit func(m map[string]any)) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	b, _ := json.Marshal(m)
	return string(b)
}

func codes(err error) []string {
	var out []string
	var l Errors
	var e *Error
	switch {
	case errors.As(err, &l):
		for _, x := range l {
			out = append(out, x.Code)
		}
	case errors.As(err, &e):
		out = append(out, e.Code)
	}
	return out
}

func TestDecodeGoodAndHashStable(t *testing.T) {
	w, err := Decode([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if w.Source.Include[0] != "**" || w.Resources.CPUCores != 1 || w.Entrypoints[0].WorkingDir != "/app" {
		t.Fatalf("defaults not filled: %+v", w)
	}
	h1, _ := w.Hash()
	// the normalized form, reformatted, hashes the same
	out, _ := w.Marshal()
	w2, err := Decode(out)
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := w2.Hash()
	if h1 != h2 || len(h1) != 64 {
		t.Fatalf("hash changed: %s vs %s", h1, h2)
	}
	// a change in content changes the hash
	w2.Name = "other"
	if h3, _ := w2.Hash(); h3 == h1 {
		t.Fatal("hash did not change")
	}
}

type badCase struct {
	name string
	doc  string
	code string
	// schemaToo: the JSON Schema must refuse it as well
	schemaToo bool
}

func badCases(t *testing.T) []badCase {
	set := func(k string, v any) func(m map[string]any) { return func(m map[string]any) { m[k] = v } }
	ep := func(v ...any) func(m map[string]any) { return set("entrypoints", v) }
	return []badCase{
		{"not json", `{"name":`, EDecode, false},
		{"duplicate key", `{"schema_version":1,"name":"a","name":"b"}`, EDecode, false},
		{"unknown field", mutate(t, good, set("colour", "red")), EDecode, true},
		{"wrong type", mutate(t, good, set("name", 7)), EDecode, true},
		{"version 2", mutate(t, good, set("schema_version", 2)), ESchemaVersion, true},
		{"no version", mutate(t, good, func(m map[string]any) { delete(m, "schema_version") }), ESchemaVersion, true},
		{"bad id upper", mutate(t, good, set("name", "Worker")), EInvalidID, true},
		{"bad id empty", mutate(t, good, set("name", "")), EInvalidID, true},
		{"bad id digit", mutate(t, good, set("name", "1x")), EInvalidID, true},
		{"language", mutate(t, good, set("language", "ruby")), ELanguage, true},
		{"source abs", mutate(t, good, set("source", map[string]any{"kind": "local_path", "path": "/etc"})), ESourceOutOfTree, false},
		{"source dotdot", mutate(t, good, set("source", map[string]any{"kind": "local_path", "path": "../x"})), ESourceOutOfTree, false},
		{"source glob dotdot", mutate(t, good, set("source", map[string]any{"kind": "local_path", "path": ".", "include": []string{"../**"}})), ESourceOutOfTree, false},
		{"source kind", mutate(t, good, set("source", map[string]any{"kind": "git", "path": "."})), ESource, true},
		{"image kind", mutate(t, good, set("image", map[string]any{"kind": "docker", "name": "x"})), EImage, true},
		{"image extra field", mutate(t, good, set("image", map[string]any{"kind": "node_image", "version": "20", "release": 12})), EImage, true},
		{"image empty nix", mutate(t, good, set("image", map[string]any{"kind": "nix_packages", "packages": []string{}})), EImage, true},
		{"debian release", mutate(t, good, set("image", map[string]any{"kind": "debian_packages", "release": 11})), EImage, true},
		{"debian bad pkg", mutate(t, good, set("image", map[string]any{"kind": "debian_packages", "release": 12, "packages": []string{"curl;rm"}})), EImage, true},
		{"oci ref not a reference", mutate(t, good, set("image", map[string]any{"kind": "oci_image", "ref": "python"})), EImage, true},
		{"oci ref with a name", mutate(t, good, set("image", map[string]any{"kind": "oci_image", "ref": "python:3.12-slim", "name": "x"})), EImage, true},
		{"oci ref missing", mutate(t, good, set("image", map[string]any{"kind": "oci_image"})), EImage, true},
		{"oci ref unparsable", mutate(t, good, set("image", map[string]any{"kind": "oci_image", "ref": "Upper/App:1"})), EImage, false},
		{"oci ref local digest", mutate(t, good, set("image", map[string]any{"kind": "oci_image", "ref": "sha256:abcd"})), EImage, false},
		{"template with a ref", mutate(t, good, set("image", map[string]any{"kind": "template", "name": "minimal", "ref": "a:b"})), EImage, true},
		{"cpu", mutate(t, good, set("resources", map[string]any{"cpu_cores": 99})), EResources, true},
		{"memory", mutate(t, good, set("resources", map[string]any{"memory_mb": 64})), EResources, true},
		{"net mode", mutate(t, good, set("network", map[string]any{"mode": "bridge"})), ENetwork, true},
		{"net deny allow", mutate(t, good, set("network", map[string]any{"mode": "deny", "allow": []string{"example.com"}})), ENetwork, false},
		{"net allow empty", mutate(t, good, set("network", map[string]any{"mode": "allow"})), ENetwork, false},
		{"ports with deny", mutate(t, good, set("network", map[string]any{"mode": "deny", "ports": []any{map[string]any{"guest": 80}}})), ENetworkPortsDeny, false},
		{"wildcard", mutate(t, good, set("network", map[string]any{"mode": "allow", "allow": []string{"*.example.com"}})), ENetworkWildcard, false},
		{"star", mutate(t, good, set("network", map[string]any{"mode": "allow", "allow": []string{"*"}})), ENetworkWildcard, false},
		{"ip literal", mutate(t, good, set("network", map[string]any{"mode": "allow", "allow": []string{"10.0.0.1:443"}})), ENetworkIPLiteral, false},
		{"cidr", mutate(t, good, set("network", map[string]any{"mode": "allow", "allow": []string{"10.0.0.0/8"}})), ENetworkIPLiteral, false},
		{"host loopback", mutate(t, good, set("network", map[string]any{"mode": "allow", "allow": []string{"host.mvm.internal:22"}})), ENetwork, false},
		{"ipv6", mutate(t, good, set("network", map[string]any{"mode": "allow", "allow": []string{"[::1]:443"}})), ENetworkIPLiteral, false},
		{"env name", mutate(t, good, set("env", map[string]any{"1X": map[string]any{"kind": "literal", "value": "v"}})), EEnv, true},
		{"env secret with value", mutate(t, good, set("env", map[string]any{"K": map[string]any{"kind": "secret", "name": "k", "value": "leak"}})), EEnv, true},
		{"env kind", mutate(t, good, set("env", map[string]any{"K": map[string]any{"kind": "file"}})), EEnv, true},
		{"no entrypoints", mutate(t, good, ep()), ENoEntrypoint, true},
		{"empty command", mutate(t, good, ep(map[string]any{"kind": "command", "command": []string{}})), EEntrypoint, true},
		{"empty argv0", mutate(t, good, ep(map[string]any{"kind": "command", "command": []string{""}})), EEntrypoint, true},
		{"dup entrypoint", mutate(t, good, ep(map[string]any{"kind": "command", "command": []string{"a"}}, map[string]any{"kind": "command", "command": []string{"a"}})), EDuplicateEntrypoint, false},
		{"two functions", mutate(t, good, ep(map[string]any{"kind": "function", "module": "a", "function": "f"}, map[string]any{"kind": "function", "module": "a", "function": "g"})), EDuplicateEntrypoint, false},
		{"bad module", mutate(t, good, ep(map[string]any{"kind": "function", "module": "../x", "function": "f"})), EEntrypoint, true},
		{"relative workdir", mutate(t, good, ep(map[string]any{"kind": "function", "module": "a", "function": "f", "working_dir": "app"})), EEntrypoint, true},
		{"empty hook", mutate(t, good, set("hooks", map[string]any{"before_start": []any{[]string{}}})), EHook, true},
		{"file path", mutate(t, good, set("files", []any{map[string]any{"path": "rel", "content_base64": ""}})), EFile, true},
		{"file reserved", mutate(t, good, set("files", []any{map[string]any{"path": "/etc/mvm/image.json", "content_base64": ""}})), EFile, false},
		{"file b64", mutate(t, good, set("files", []any{map[string]any{"path": "/a", "content_base64": "!!"}})), EFile, false},
	}
}

func TestValidationCodes(t *testing.T) {
	for _, c := range badCases(t) {
		_, err := Decode([]byte(c.doc))
		got := codes(err)
		found := false
		for _, g := range got {
			found = found || g == c.code
		}
		if !found {
			t.Errorf("%s: want %s, got %v (%v)", c.name, c.code, got, err)
		}
	}
}

func resolvedSchema(t *testing.T) *jsonschema.Resolved {
	t.Helper()
	var s jsonschema.Schema
	if err := json.Unmarshal(schema.WorkloadIRv1, &s); err != nil {
		t.Fatal(err)
	}
	rs, err := s.Resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// The JSON Schema and the Go decoder agree: good documents pass both,
// and every shape error the schema can express is refused by both.
func TestSchemaAgreesWithGo(t *testing.T) {
	rs := resolvedSchema(t)
	goods := []string{good,
		mutate(t, good, func(m map[string]any) {
			m["image"] = map[string]any{"kind": "python_image", "version": "3.13", "packages": []string{"curl"}}
			m["network"] = map[string]any{"mode": "allow", "allow": []string{"api.example.com:443"}, "ports": []any{map[string]any{"guest": 8080, "host": 18080}}}
			m["env"] = map[string]any{"A": map[string]any{"kind": "literal", "value": "1"}, "B": map[string]any{"kind": "secret", "name": "openai-key"}}
			m["entrypoints"] = []any{map[string]any{"kind": "command", "command": []string{"python", "main.py"}}, map[string]any{"kind": "function", "module": "app", "function": "run", "warm": true}}
			m["hooks"] = map[string]any{"before_start": []any{[]string{"python", "-V"}}}
			m["resources"] = map[string]any{"cpu_cores": 2, "memory_mb": 1024, "disk_mb": 2048}
		}),
		mutate(t, good, func(m map[string]any) {
			m["image"] = map[string]any{"kind": "oci_image", "ref": "python:3.12-slim"}
		}),
		mutate(t, good, func(m map[string]any) {
			m["image"] = map[string]any{"kind": "oci_image", "ref": "127.0.0.1:5000/org/app@sha256:" + strings.Repeat("ab", 32)}
		}),
	}
	for i, d := range goods {
		if _, err := Decode([]byte(d)); err != nil {
			t.Errorf("good %d: Go refused: %v", i, err)
		}
		var inst any
		json.Unmarshal([]byte(d), &inst)
		if err := rs.Validate(inst); err != nil {
			t.Errorf("good %d: schema refused: %v", i, err)
		}
		// the normalized output validates too
		w, _ := Decode([]byte(d))
		out, _ := w.Marshal()
		json.Unmarshal(out, &inst)
		if err := rs.Validate(inst); err != nil {
			t.Errorf("good %d normalized: schema refused: %v\n%s", i, err, out)
		}
	}
	for _, c := range badCases(t) {
		if !c.schemaToo {
			continue
		}
		var inst any
		if err := json.Unmarshal([]byte(c.doc), &inst); err != nil {
			continue
		}
		if err := rs.Validate(inst); err == nil {
			t.Errorf("%s: schema accepted what Go refuses (%s)", c.name, c.code)
		}
	}
}

func TestRealize(t *testing.T) {
	r, err := Realize(Image{Kind: ImageNixPackages, Packages: []string{"python313", "git"}})
	if err != nil || r.Template != "python-3.13" || strings.Join(r.Packages, ",") != "git" {
		t.Fatalf("python313: %+v %v", r, err)
	}
	_, err = Realize(Image{Kind: ImageNixPackages, Packages: []string{"python312"}})
	if c := codes(err); len(c) != 1 || c[0] != EImageUnavailable {
		t.Fatalf("python312: %v", err)
	}
	for _, want := range []string{"python311", "python313", "mvm.python_image(\"3.13\")", "mvm.oci_image("} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("python312 message lacks %q: %v", want, err)
		}
	}
	if _, err := Realize(Image{Kind: ImageNixPackages, Packages: []string{"python311", "nodejs_20"}}); err == nil {
		t.Error("python311+nodejs_20 (two releases) accepted")
	}
	if _, err := Realize(Image{Kind: ImagePython, Version: "3.12"}); err == nil || !strings.Contains(err.Error(), "3.11, 3.13") || !strings.Contains(err.Error(), `mvm.oci_image("python:3.12-slim")`) {
		t.Errorf("python_image 3.12: %v", err)
	}
	if r, err := Realize(Image{Kind: ImageNode, Version: "20"}); err != nil || r.Template != "node-20" {
		t.Errorf("node 20: %+v %v", r, err)
	}
	if r, err := Realize(Image{Kind: ImageOCI, Ref: "python:3.12-slim"}); err != nil || r.OCIRef != "python:3.12-slim" || r.Template != "" {
		t.Errorf("oci_image: %+v %v", r, err)
	}
	if _, err := Realize(Image{Kind: ImageTemplate, Name: "nope"}); err == nil {
		t.Error("unknown template accepted")
	}
}
