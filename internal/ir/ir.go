// Package ir defines Workload IR v1: the reviewed, hashed JSON form of a
// workload declaration (`@mvm.app` in Python, `mvm.app({...})` in
// TypeScript, or a runtime-SDK recording). `mvmctl compile` writes it,
// `approve` records its hash, `build`/`up`/`invoke` consume it.
//
// Decoding is strict (unknown fields, duplicate keys, trailing data and
// wrong types are refused), defaults are filled in before hashing, and the
// identity of a workload is the sha256 of the RFC 8785 form of the
// normalized document. The JSON Schema in schema/workload-ir.v1.json
// describes the same shape; a test keeps the two in agreement. See
// docs/workload-ir.md.
package ir

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/gowebpki/jcs"
)

// SchemaVersion is the IR version this package reads and writes.
const SchemaVersion = 1

// MaxBytes caps an IR document (it may carry recorded files).
const MaxBytes = 16 << 20

// Defaults filled in by Normalize.
const (
	DefaultWorkingDir = "/app"
	DefaultCPUCores   = 1
	DefaultMemoryMB   = 512
	DefaultDiskMB     = 4096
)

// Languages of function entrypoints.
const (
	LangPython = "python"
	LangNode   = "node"
)

// Workload is one declared workload: one app, one microVM.
type Workload struct {
	SchemaVersion int               `json:"schema_version"`
	Name          string            `json:"name"`
	Language      string            `json:"language"`
	Source        Source            `json:"source"`
	Image         Image             `json:"image"`
	Resources     Resources         `json:"resources"`
	Network       Network           `json:"network"`
	Env           map[string]EnvVal `json:"env"`
	Entrypoints   []Entrypoint      `json:"entrypoints"`
	Hooks         Hooks             `json:"hooks"`
	// Files are files written into the image (from recordings).
	Files []File `json:"files"`
}

// Source is the code that lands at the working directory. Path is relative
// to the directory of the IR file (or of the declaration, when compiled in
// memory) and must stay inside it.
type Source struct {
	Kind    string   `json:"kind"` // "local_path"
	Path    string   `json:"path"`
	Include []string `json:"include"`
	Exclude []string `json:"exclude"`
}

// Image kinds.
const (
	ImageNixPackages    = "nix_packages"
	ImageDebianPackages = "debian_packages"
	ImagePython         = "python_image"
	ImageNode           = "node_image"
	ImageTemplate       = "template"
	ImageOCI            = "oci_image"
)

// Image says what the root filesystem is built from. Which fields apply
// depends on Kind:
//
//	nix_packages     packages (Nix attribute names, see NixTable)
//	debian_packages  packages, release (12 or 13)
//	python_image     version ("3.11", "3.13"), packages (Debian)
//	node_image       version ("18", "20")
//	template         name (an mvm template)
//	oci_image        ref (an OCI image reference, pulled at build; pin it
//	                 as name@sha256:... for the hash to cover the content)
type Image struct {
	Kind     string   `json:"kind"`
	Packages []string `json:"packages,omitempty"`
	Release  int      `json:"release,omitempty"`
	Version  string   `json:"version,omitempty"`
	Name     string   `json:"name,omitempty"`
	Ref      string   `json:"ref,omitempty"`
}

// Resources of the microVM.
type Resources struct {
	CPUCores int `json:"cpu_cores"`
	MemoryMB int `json:"memory_mb"`
	DiskMB   int `json:"disk_mb"`
}

// Network modes.
const (
	NetDeny  = "deny"
	NetAllow = "allow"
)

// Network is deny (no NIC) or allow (host-enforced allowlist of
// "host[:port]" destinations).
type Network struct {
	Mode  string   `json:"mode"`
	Allow []string `json:"allow"`
	Ports []Port   `json:"ports"`
}

// Port publishes a guest TCP port on 127.0.0.1 of the host.
type Port struct {
	Guest int `json:"guest"`
	Host  int `json:"host"`
}

// EnvVal is a literal value or a reference to a secret by name (the value
// never appears in IR).
type EnvVal struct {
	Kind  string `json:"kind"` // "literal" | "secret"
	Value string `json:"value,omitempty"`
	Name  string `json:"name,omitempty"`
}

// Entrypoint kinds.
const (
	EntryCommand  = "command"
	EntryFunction = "function"
)

// Entrypoint is a command (argv) or a function (module + function, called
// with JSON arguments by `mvmctl invoke`).
type Entrypoint struct {
	Kind       string            `json:"kind"`
	Command    []string          `json:"command,omitempty"`
	Module     string            `json:"module,omitempty"`
	Function   string            `json:"function,omitempty"`
	Warm       bool              `json:"warm,omitempty"`
	WorkingDir string            `json:"working_dir"`
	Env        map[string]string `json:"env"`
}

// Hooks are argv lists run around the workload's life.
type Hooks struct {
	BeforeStart [][]string `json:"before_start"`
	AfterStart  [][]string `json:"after_start"`
	BeforeStop  [][]string `json:"before_stop"`
}

// File is a file placed into the image (absolute guest path).
type File struct {
	Path          string `json:"path"`
	ContentBase64 string `json:"content_base64"`
	Mode          int    `json:"mode"`
}

// Normalize fills in defaults so that a document with and without them
// has the same hash. It does not validate.
func (w *Workload) Normalize() {
	if w.SchemaVersion == 0 {
		w.SchemaVersion = SchemaVersion
	}
	if w.Source.Kind == "" {
		w.Source.Kind = "local_path"
	}
	if w.Source.Path == "" {
		w.Source.Path = "."
	}
	if w.Source.Include == nil {
		w.Source.Include = []string{"**"}
	}
	if w.Source.Exclude == nil {
		w.Source.Exclude = []string{}
	}
	if w.Resources.CPUCores == 0 {
		w.Resources.CPUCores = DefaultCPUCores
	}
	if w.Resources.MemoryMB == 0 {
		w.Resources.MemoryMB = DefaultMemoryMB
	}
	if w.Resources.DiskMB == 0 {
		w.Resources.DiskMB = DefaultDiskMB
	}
	if w.Network.Mode == "" {
		w.Network.Mode = NetDeny
	}
	if w.Network.Allow == nil {
		w.Network.Allow = []string{}
	}
	if w.Network.Ports == nil {
		w.Network.Ports = []Port{}
	}
	if w.Env == nil {
		w.Env = map[string]EnvVal{}
	}
	if w.Entrypoints == nil {
		w.Entrypoints = []Entrypoint{}
	}
	for i := range w.Entrypoints {
		e := &w.Entrypoints[i]
		if e.WorkingDir == "" {
			e.WorkingDir = DefaultWorkingDir
		}
		if e.Env == nil {
			e.Env = map[string]string{}
		}
	}
	for _, h := range []*[][]string{&w.Hooks.BeforeStart, &w.Hooks.AfterStart, &w.Hooks.BeforeStop} {
		if *h == nil {
			*h = [][]string{}
		}
	}
	if w.Files == nil {
		w.Files = []File{}
	}
	for i := range w.Files {
		if w.Files[i].Mode == 0 {
			w.Files[i].Mode = 0o644
		}
	}
	if w.Image.Packages != nil && len(w.Image.Packages) == 0 {
		w.Image.Packages = nil
	}
}

// Canonical returns the RFC 8785 form of the normalized workload.
func (w *Workload) Canonical() ([]byte, error) {
	c := *w
	c.Normalize()
	raw, err := json.Marshal(&c)
	if err != nil {
		return nil, err
	}
	return jcs.Transform(raw)
}

// Hash is the workload's identity: lowercase hex sha256 of Canonical.
func (w *Workload) Hash() (string, error) {
	b, err := w.Canonical()
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

// Marshal returns the normalized workload as indented JSON (what compile
// writes). Its hash is the same as that of its canonical form.
func (w *Workload) Marshal() ([]byte, error) {
	c := *w
	c.Normalize()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&c); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Decode reads one IR document strictly: size cap, no duplicate keys, no
// unknown fields, no trailing data, the supported schema version; then it
// normalizes and validates it. Errors are *Error or Errors with E_* codes.
func Decode(data []byte) (*Workload, error) {
	if len(data) > MaxBytes {
		return nil, &Error{Code: EDecode, Path: "", Msg: fmt.Sprintf("IR document is %d bytes, more than the %d allowed", len(data), MaxBytes)}
	}
	// jcs refuses malformed JSON and duplicate object keys.
	if _, err := jcs.Transform(data); err != nil {
		return nil, &Error{Code: EDecode, Msg: fmt.Sprintf("not a valid JSON document: %v", err)}
	}
	var probe struct {
		SchemaVersion json.RawMessage `json:"schema_version"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, &Error{Code: EDecode, Msg: fmt.Sprintf("not a JSON object: %v", err)}
	}
	if string(probe.SchemaVersion) != "1" {
		v := string(probe.SchemaVersion)
		if v == "" {
			v = "missing"
		}
		return nil, &Error{Code: ESchemaVersion, Path: "schema_version", Msg: fmt.Sprintf("schema_version is %s; this mvm reads Workload IR version %d (recompile the declaration with this mvmctl)", v, SchemaVersion)}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var w Workload
	if err := dec.Decode(&w); err != nil {
		return nil, &Error{Code: EDecode, Msg: decodeMsg(err)}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &Error{Code: EDecode, Msg: "trailing data after the IR document"}
	}
	w.Normalize()
	if err := w.Validate(); err != nil {
		return nil, err
	}
	return &w, nil
}

func decodeMsg(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %s: want %s, got JSON %s", te.Field, te.Type, te.Value)
	}
	return err.Error()
}

// FunctionEntrypoint returns the first function entrypoint, if any.
func (w *Workload) FunctionEntrypoint() (Entrypoint, bool) {
	for _, e := range w.Entrypoints {
		if e.Kind == EntryFunction {
			return e, true
		}
	}
	return Entrypoint{}, false
}

// CommandEntrypoint returns the first command entrypoint, if any.
func (w *Workload) CommandEntrypoint() (Entrypoint, bool) {
	for _, e := range w.Entrypoints {
		if e.Kind == EntryCommand {
			return e, true
		}
	}
	return Entrypoint{}, false
}

// SecretNames lists the secrets the workload references, sorted.
func (w *Workload) SecretNames() []string {
	var out []string
	for _, v := range w.Env {
		if v.Kind == "secret" {
			out = append(out, v.Name)
		}
	}
	sort.Strings(out)
	return out
}
