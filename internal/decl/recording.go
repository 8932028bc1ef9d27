package decl

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/ir"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// recording is the record-mode file of the runtime SDKs
// (sdk/python/src/mvm/_record.py, sdk/typescript/src/record.ts).
type recording struct {
	SchemaVersion int              `json:"schema_version"`
	SDK           string           `json:"sdk"`
	WorkloadID    string           `json:"workload_id"`
	Create        recCreate        `json:"create"`
	Ops           []map[string]any `json:"ops"`
}

type recCreate struct {
	Template  *string                    `json:"template"`
	BuildDir  *string                    `json:"build_dir"`
	Env       map[string]json.RawMessage `json:"env"`
	Resources struct {
		CPUCores *int `json:"cpu_cores"`
		MemoryMB *int `json:"memory_mb"`
	} `json:"resources"`
	Network any `json:"network"`
}

var nonID = lazyre.New(`[^a-z0-9-]+`)

// compileRecording lowers a recording: the template becomes the image,
// file writes become files of the image, the last started command the
// entrypoint and earlier ones before_start hooks.
func compileRecording(file string, src []byte) (*ir.Workload, error) {
	bad := func(format string, a ...any) error {
		return &Error{File: file, Code: ERecording, Msg: fmt.Sprintf(format, a...), Allowed: "a file written by MVM_SDK_MODE=record (schema_version 1)"}
	}
	var rec recording
	if err := json.NewDecoder(bytes.NewReader(src)).Decode(&rec); err != nil {
		return nil, bad("not a recording: %v", err)
	}
	if rec.SchemaVersion != 1 {
		return nil, bad("schema_version %d: this mvmctl reads recordings of version 1", rec.SchemaVersion)
	}
	w := &ir.Workload{SchemaVersion: ir.SchemaVersion, Language: ir.LangPython}
	w.Name = strings.Trim(nonID.ReplaceAllString(strings.ToLower(rec.WorkloadID), "-"), "-")
	if len(w.Name) > 63 {
		w.Name = w.Name[:63]
	}
	if rec.Create.BuildDir != nil {
		return nil, bad("the recording creates its sandbox from the build directory %q: build it with `mvmctl build DIR` instead", *rec.Create.BuildDir)
	}
	if rec.Create.Template == nil || *rec.Create.Template == "" {
		return nil, bad("the recording has no template")
	}
	w.Image = ir.Image{Kind: ir.ImageTemplate, Name: *rec.Create.Template}
	if strings.HasPrefix(*rec.Create.Template, "node") {
		w.Language = ir.LangNode
	}
	if r := rec.Create.Resources; r.CPUCores != nil || r.MemoryMB != nil {
		if r.CPUCores != nil {
			w.Resources.CPUCores = *r.CPUCores
		}
		if r.MemoryMB != nil {
			w.Resources.MemoryMB = *r.MemoryMB
		}
	}
	switch n := rec.Create.Network.(type) {
	case nil:
	case string:
		if n != "none" {
			return nil, bad("network preset %q: a workload lists its destinations; record with network=[\"host:port\", ...]", n)
		}
	case []any:
		w.Network.Mode = ir.NetAllow
		for _, h := range n {
			s, ok := h.(string)
			if !ok {
				return nil, bad("network entries must be strings")
			}
			w.Network.Allow = append(w.Network.Allow, s)
		}
	default:
		return nil, bad("network: want null, a preset or a list of hosts")
	}
	w.Env = map[string]ir.EnvVal{}
	for k, raw := range rec.Create.Env {
		var v ir.EnvVal
		d := json.NewDecoder(bytes.NewReader(raw))
		d.DisallowUnknownFields()
		if err := d.Decode(&v); err != nil {
			return nil, bad("env %s: %v", k, err)
		}
		w.Env[k] = v
	}
	w.Source = ir.Source{Kind: "local_path", Path: ".", Include: []string{}, Exclude: []string{}}
	files := map[string]*ir.File{}
	var order []string
	var cmds [][]string
	var cwds []string
	str := func(op map[string]any, k string) (string, bool) {
		s, ok := op[k].(string)
		return s, ok
	}
	for i, op := range rec.Ops {
		kind, _ := str(op, "kind")
		switch kind {
		case "files_write":
			p, ok := str(op, "path")
			b64, ok2 := str(op, "bytes_b64")
			if !ok || !ok2 {
				return nil, bad("ops[%d]: files_write needs path and bytes_b64", i)
			}
			data, err := base64.StdEncoding.DecodeString(b64)
			if err != nil {
				return nil, bad("ops[%d]: bytes_b64: %v", i, err)
			}
			p = path.Clean(p)
			mode := 0o644
			if m, ok := str(op, "mode"); ok {
				v, err := strconv.ParseUint(m, 8, 32)
				if err != nil {
					return nil, bad("ops[%d]: mode %q", i, m)
				}
				mode = int(v)
			}
			f := files[p]
			if f == nil {
				f = &ir.File{Path: p}
				files[p] = f
				order = append(order, p)
			}
			if ap, _ := op["append"].(bool); ap && f.ContentBase64 != "" {
				old, _ := base64.StdEncoding.DecodeString(f.ContentBase64)
				data = append(old, data...)
			}
			f.ContentBase64 = base64.StdEncoding.EncodeToString(data)
			f.Mode = mode
		case "files_remove":
			p, _ := str(op, "path")
			p = path.Clean(p)
			for _, q := range order {
				if q == p || strings.HasPrefix(q, p+"/") {
					delete(files, q)
				}
			}
		case "files_rename":
			a, _ := str(op, "src")
			b, _ := str(op, "dst")
			if f := files[path.Clean(a)]; f != nil {
				delete(files, path.Clean(a))
				f.Path = path.Clean(b)
				files[f.Path] = f
				order = append(order, f.Path)
			}
		case "command_start", "command_run":
			raw, _ := op["argv"].([]any)
			var argv []string
			for _, a := range raw {
				s, ok := a.(string)
				if !ok {
					return nil, bad("ops[%d]: argv entries must be strings", i)
				}
				argv = append(argv, s)
			}
			if len(argv) == 0 {
				return nil, bad("ops[%d]: %s without argv", i, kind)
			}
			cmds = append(cmds, argv)
			cwd, _ := str(op, "cwd")
			cwds = append(cwds, cwd)
		case "files_mkdir", "kill", "detach", "ports_forward", "":
			// nothing to keep: directories come with files, the lifecycle
			// is the runtime's
		default:
			return nil, bad("ops[%d]: operation %q cannot be part of a workload", i, kind)
		}
	}
	seen := map[string]bool{}
	for _, p := range order {
		if f := files[p]; f != nil && !seen[p] && f.Path == p {
			w.Files = append(w.Files, *f)
			seen[p] = true
		}
	}
	if len(cmds) == 0 {
		return nil, bad("the recording starts no command, so the workload has no entrypoint")
	}
	last := len(cmds) - 1
	w.Hooks.BeforeStart = cmds[:last]
	ep := ir.Entrypoint{Kind: ir.EntryCommand, Command: cmds[last], WorkingDir: cwds[last]}
	w.Entrypoints = []ir.Entrypoint{ep}
	return w, nil
}
