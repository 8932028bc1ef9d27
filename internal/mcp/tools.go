package mcp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/jsonschema-go/jsonschema"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// ---- tool arguments and results ----

// CreateArgs are sandbox_create's arguments.
type CreateArgs struct {
	Template  string   `json:"template,omitempty" jsonschema:"template or built image to boot: minimal (default; busybox sh), python, node, debian, or the name of an image built with mvmctl build"`
	TTL       Duration `json:"ttl,omitempty" jsonschema:"lifetime: seconds, or a duration like 10m; default and maximum MVM_MCP_SESSION_MAX"`
	Allow     []string `json:"allow,omitempty" jsonschema:"network allowlist (host names, *.domain, IPs or CIDRs, optionally :port); empty means no network"`
	CPUs      int      `json:"cpus,omitempty" jsonschema:"virtual CPUs (default 1, at most the host's CPU count)"`
	MemoryMiB int      `json:"memory_mib,omitempty" jsonschema:"guest memory in MiB (default 512, at most MVM_MCP_MEM_CEILING_MIB)"`
}

// SandboxInfo describes one sandbox of this server.
type SandboxInfo struct {
	Sandbox     string    `json:"sandbox" jsonschema:"the handle: pass it as sandbox to the other tools"`
	SandboxID   string    `json:"sandbox_id"`
	Status      string    `json:"status"`
	Template    string    `json:"template"`
	Image       string    `json:"image,omitempty"`
	CPUs        int       `json:"cpus"`
	MemoryMiB   int       `json:"memory_mib"`
	Network     string    `json:"network"`
	Profile     string    `json:"profile"`
	Created     time.Time `json:"created"`
	ExpiresAt   time.Time `json:"expires_at" jsonschema:"when the sandbox is destroyed whatever happens (ttl)"`
	IdleSeconds int64     `json:"idle_seconds" jsonschema:"seconds since the last tool call on it"`
	IdleLimitS  int64     `json:"idle_limit_seconds" jsonschema:"it is destroyed after this many idle seconds"`
	BootMS      int64     `json:"boot_ms,omitempty"`
}

// SandboxArgs name one sandbox.
type SandboxArgs struct {
	Sandbox string `json:"sandbox" jsonschema:"the handle returned by sandbox_create"`
}

// ListArgs are sandbox_list's (no) arguments.
type ListArgs struct{}

// LimitsInfo reports the server's limits.
type LimitsInfo struct {
	SessionIdleS   int64 `json:"session_idle_seconds"`
	SessionMaxS    int64 `json:"session_max_seconds"`
	MaxInflight    int   `json:"max_inflight"`
	MemCeilingMiB  int   `json:"mem_ceiling_mib"`
	OutputCapBytes int   `json:"output_cap_bytes"`
}

// ListResult is sandbox_list's result.
type ListResult struct {
	Sandboxes []SandboxInfo `json:"sandboxes"`
	Inflight  int           `json:"inflight" jsonschema:"tool calls counted against max_inflight that are running now"`
	Limits    LimitsInfo    `json:"limits"`
}

// DestroyResult is sandbox_destroy's result.
type DestroyResult struct {
	Sandbox   string `json:"sandbox"`
	Destroyed bool   `json:"destroyed"`
}

// RunCommandArgs are run_command's arguments.
type RunCommandArgs struct {
	Sandbox   string   `json:"sandbox,omitempty" jsonschema:"handle of a sandbox from sandbox_create; omit to run in a fresh sandbox destroyed afterwards"`
	Command   string   `json:"command,omitempty" jsonschema:"a shell command line, run with sh -c (give command or argv)"`
	Argv      []string `json:"argv,omitempty" jsonschema:"program and arguments, run without a shell (give command or argv)"`
	Cwd       string   `json:"cwd,omitempty" jsonschema:"working directory in the sandbox (absolute)"`
	Stdin     string   `json:"stdin,omitempty" jsonschema:"text given to the command on standard input"`
	Timeout   Duration `json:"timeout,omitempty" jsonschema:"kill the command after this long: seconds or a duration like 90s (default 60s, at most 10m)"`
	Template  string   `json:"template,omitempty" jsonschema:"without sandbox: template of the fresh sandbox (default minimal)"`
	MemoryMiB int      `json:"memory_mib,omitempty" jsonschema:"without sandbox: memory of the fresh sandbox in MiB (default 512)"`
}

// RunCodeArgs are run_code's arguments.
type RunCodeArgs struct {
	Sandbox   string   `json:"sandbox,omitempty" jsonschema:"handle of a sandbox from sandbox_create; omit to run in a fresh sandbox of the language's template, destroyed afterwards"`
	Language  string   `json:"language" jsonschema:"python, node or shell"`
	Code      string   `json:"code" jsonschema:"the program text"`
	Stdin     string   `json:"stdin,omitempty" jsonschema:"text given to the program on standard input"`
	Timeout   Duration `json:"timeout,omitempty" jsonschema:"kill the program after this long: seconds or a duration like 90s (default 60s, at most 10m)"`
	MemoryMiB int      `json:"memory_mib,omitempty" jsonschema:"without sandbox: memory of the fresh sandbox in MiB (default 512)"`
}

// FilesWriteArgs are files_write's arguments.
type FilesWriteArgs struct {
	Sandbox       string `json:"sandbox" jsonschema:"the handle returned by sandbox_create"`
	Path          string `json:"path" jsonschema:"absolute path in the sandbox; missing parent directories are created"`
	Content       string `json:"content,omitempty" jsonschema:"the file's content as text (give content or content_base64)"`
	ContentBase64 string `json:"content_base64,omitempty" jsonschema:"the file's content as base64, for bytes that are not text"`
}

// FilesWriteResult is files_write's result.
type FilesWriteResult struct {
	Sandbox string `json:"sandbox"`
	Path    string `json:"path"`
	Bytes   int64  `json:"bytes"`
}

// FilesReadArgs are files_read's arguments.
type FilesReadArgs struct {
	Sandbox  string `json:"sandbox" jsonschema:"the handle returned by sandbox_create"`
	Path     string `json:"path" jsonschema:"absolute path of a file in the sandbox"`
	MaxBytes int    `json:"max_bytes,omitempty" jsonschema:"return at most this many bytes (default 1 MiB, at most 8 MiB)"`
}

// FilesReadResult is files_read's result.
type FilesReadResult struct {
	Sandbox       string `json:"sandbox"`
	Path          string `json:"path"`
	Size          int64  `json:"size" jsonschema:"the file's size in bytes"`
	Content       string `json:"content,omitempty" jsonschema:"the bytes returned, when they are UTF-8 text"`
	ContentBase64 string `json:"content_base64,omitempty" jsonschema:"the bytes returned, base64, when they are not UTF-8 text"`
	Bytes         int64  `json:"bytes" jsonschema:"number of bytes returned"`
	Truncated     bool   `json:"truncated" jsonschema:"the file is longer than what is returned"`
}

// FilesListArgs are files_list's arguments.
type FilesListArgs struct {
	Sandbox string `json:"sandbox" jsonschema:"the handle returned by sandbox_create"`
	Path    string `json:"path" jsonschema:"absolute path of a directory in the sandbox"`
}

// FileEntry is one directory entry.
type FileEntry struct {
	Name       string    `json:"name"`
	Type       string    `json:"type" jsonschema:"file, dir, symlink, fifo, socket, char or block"`
	Size       int64     `json:"size"`
	Mode       string    `json:"mode" jsonschema:"permission bits, octal"`
	Modified   time.Time `json:"modified"`
	LinkTarget string    `json:"link_target,omitempty"`
}

// FilesListResult is files_list's result.
type FilesListResult struct {
	Sandbox   string      `json:"sandbox"`
	Path      string      `json:"path"`
	Entries   []FileEntry `json:"entries"`
	Truncated bool        `json:"truncated"`
}

// ---- registration ----

// schemaFor infers a tool's input or output schema and adjusts what
// reflection cannot know: durations are numbers or strings, a receipt is
// an object, enums.
func schemaFor[T any](enums map[string][]any) *jsonschema.Schema {
	s, err := jsonschema.For[T](&jsonschema.ForOptions{TypeSchemas: map[reflect.Type]*jsonschema.Schema{
		reflect.TypeFor[Duration]():        {Types: []string{"number", "string"}},
		reflect.TypeFor[json.RawMessage](): {Type: "object"},
	}})
	if err != nil {
		panic(fmt.Sprintf("mcp: schema of %T: %v", *new(T), err))
	}
	for name, vals := range enums {
		if p := s.Properties[name]; p != nil {
			p.Enum = vals
		}
	}
	return s
}

// addTool registers a handler. Gated tools count against the in-flight
// limit; every call is logged (tool, sandbox, outcome, duration; never
// code, argv values, stdin, output or file contents).
func addTool[In, Out any](s *Server, t *sdk.Tool, gated bool, enums map[string][]any,
	h func(ctx context.Context, in In) (Out, string, error), sandboxOf func(In) string) {
	t.InputSchema = schemaFor[In](enums)
	t.OutputSchema = schemaFor[Out](nil)
	sdk.AddTool(s.sdk, t, func(ctx context.Context, _ *sdk.CallToolRequest, in In) (*sdk.CallToolResult, Out, error) {
		var zero Out
		t0 := time.Now()
		leave, err := s.enter(gated)
		if err != nil {
			s.log.Warn("tool call refused", "tool", t.Name, "sandbox", sandboxOf(in), "error", err)
			return nil, zero, err
		}
		defer leave()
		ctx, cancel := s.callContext(ctx)
		defer cancel()
		out, text, err := h(ctx, in)
		if err != nil {
			s.log.Info("tool call failed", "tool", t.Name, "sandbox", sandboxOf(in), "duration", time.Since(t0).Round(time.Millisecond), "error", err)
			return nil, zero, err
		}
		s.log.Info("tool call", "tool", t.Name, "sandbox", sandboxOf(in), "duration", time.Since(t0).Round(time.Millisecond))
		return &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: text}}}, out, nil
	})
}

func ptr[T any](v T) *T { return &v }

func (s *Server) addTools() {
	addTool(s, &sdk.Tool{
		Name:  "sandbox_create",
		Title: "Create a sandbox",
		Description: "Boot a microVM sandbox and return its handle as \"sandbox\". It keeps files and processes between calls " +
			"until sandbox_destroy, its ttl, MVM_MCP_SESSION_IDLE of inactivity, or the end of this server. " +
			"No network unless allow is given; restrictive profile.",
		Annotations: &sdk.ToolAnnotations{DestructiveHint: ptr(false), OpenWorldHint: ptr(false)},
	}, true, nil, s.sandboxCreate, func(CreateArgs) string { return "" })

	addTool(s, &sdk.Tool{
		Name:        "sandbox_list",
		Title:       "List sandboxes",
		Description: "List the sandboxes this server created and still holds, with their handles, status, expiry and idle time, and the server's limits.",
		Annotations: &sdk.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: ptr(false)},
	}, false, nil, s.sandboxList, func(ListArgs) string { return "" })

	addTool(s, &sdk.Tool{
		Name:        "sandbox_destroy",
		Title:       "Destroy a sandbox",
		Description: "Destroy a sandbox and everything in it. Never refused as busy.",
		Annotations: &sdk.ToolAnnotations{DestructiveHint: ptr(true), IdempotentHint: true, OpenWorldHint: ptr(false)},
	}, false, nil, s.sandboxDestroy, func(a SandboxArgs) string { return a.Sandbox })

	addTool(s, &sdk.Tool{
		Name:  "run_command",
		Title: "Run a command in a sandbox",
		Description: "Run a command in a microVM sandbox and return stdout, stderr and exit_code. Give command (a shell line, run with sh -c) or argv. " +
			"With sandbox, it runs in that sandbox; without, in a fresh sandbox destroyed afterwards. " +
			fmt.Sprintf("Each output stream is capped at %d KiB (the rest is counted and marked truncated).", OutputCapBytes>>10),
		Annotations: &sdk.ToolAnnotations{DestructiveHint: ptr(true), OpenWorldHint: ptr(false)},
	}, true, nil, s.runCommand, func(a RunCommandArgs) string { return a.Sandbox })

	addTool(s, &sdk.Tool{
		Name:  "run_code",
		Title: "Run code in a sandbox",
		Description: "Run a python, node or shell program in a microVM sandbox and return stdout, stderr and exit_code. " +
			"With sandbox, it runs there (the interpreter must exist in its template); without, in a fresh sandbox of the " +
			"language's template (python, node; shell uses minimal), destroyed afterwards. " +
			fmt.Sprintf("Each output stream is capped at %d KiB.", OutputCapBytes>>10),
		Annotations: &sdk.ToolAnnotations{DestructiveHint: ptr(true), OpenWorldHint: ptr(false)},
	}, true, map[string][]any{"language": {"python", "node", "shell"}}, s.runCode, func(a RunCodeArgs) string { return a.Sandbox })

	addTool(s, &sdk.Tool{
		Name:        "files_write",
		Title:       "Write a file in a sandbox",
		Description: "Write a file in a sandbox, replacing it if it exists; parent directories are created. Give content (text) or content_base64 (bytes).",
		Annotations: &sdk.ToolAnnotations{DestructiveHint: ptr(true), IdempotentHint: true, OpenWorldHint: ptr(false)},
	}, true, nil, s.filesWrite, func(a FilesWriteArgs) string { return a.Sandbox })

	addTool(s, &sdk.Tool{
		Name:        "files_read",
		Title:       "Read a file in a sandbox",
		Description: "Read a file from a sandbox: content when it is UTF-8 text, else content_base64; at most max_bytes (default 1 MiB) are returned.",
		Annotations: &sdk.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: ptr(false)},
	}, true, nil, s.filesRead, func(a FilesReadArgs) string { return a.Sandbox })

	addTool(s, &sdk.Tool{
		Name:        "files_list",
		Title:       "List a directory in a sandbox",
		Description: "List a directory in a sandbox: name, type, size, mode and modification time of each entry.",
		Annotations: &sdk.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: ptr(false)},
	}, true, nil, s.filesList, func(a FilesListArgs) string { return a.Sandbox })
}

// ---- sandboxes ----

func (s *Server) limitsInfo() LimitsInfo {
	return LimitsInfo{
		SessionIdleS: int64(s.lim.SessionIdle / time.Second), SessionMaxS: int64(s.lim.SessionMax / time.Second),
		MaxInflight: s.lim.MaxInflight, MemCeilingMiB: s.lim.MemCeilingMiB, OutputCapBytes: OutputCapBytes,
	}
}

// checkNetwork turns an allowlist into the sandbox's network policy and
// the profile that admits it: no allowlist is the restrictive profile with
// no network device; an allowlist (HOST[:PORT] entries, port 443 by
// default; presets and "unrestricted" are not offered to models) moves the
// sandbox to the standard profile, which allows allowlisted egress and
// still no caller env or host directories (MCP offers neither).
func checkNetwork(allow []string) (netpolicy.Config, plan.Profile, error) {
	if len(allow) == 0 {
		return netpolicy.Config{Mode: netpolicy.None}, Profile, nil
	}
	cfg := netpolicy.Config{Mode: netpolicy.Allowlist}
	for _, a := range allow {
		r, err := netpolicy.ParseAllow(a)
		if err != nil {
			return cfg, "", fmt.Errorf("refused: allow %q: %v", a, err)
		}
		cfg.Allow = append(cfg.Allow, r)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, "", fmt.Errorf("refused: allow: %v", err)
	}
	req := plan.Request{Network: plan.Network{Mode: plan.NetAllowlist, Allow: cfg.Strings()}}
	if err := plan.Standard.Validate(req); err != nil {
		return cfg, "", fmt.Errorf("refused: allow: %v", err)
	}
	return cfg, plan.Standard, nil
}

func (s *Server) sandboxCreate(ctx context.Context, a CreateArgs) (SandboxInfo, string, error) {
	var zero SandboxInfo
	if err := checkTemplate(a.Template); err != nil {
		return zero, "", err
	}
	mem, err := s.memory(a.MemoryMiB, a.Template)
	if err != nil {
		return zero, "", err
	}
	cpus := a.CPUs
	if cpus == 0 {
		cpus = 1
	}
	if cpus < 1 || cpus > s.maxCPUs {
		return zero, "", fmt.Errorf("cpus %d: must be between 1 and %d on this host", a.CPUs, s.maxCPUs)
	}
	ttl := a.TTL.D()
	if ttl == 0 {
		ttl = s.lim.SessionMax
	}
	if ttl < time.Second {
		return zero, "", fmt.Errorf("ttl %s: must be at least 1s", ttl)
	}
	if ttl > s.lim.SessionMax {
		return zero, "", fmt.Errorf("ttl %s exceeds the longest lifetime this server allows, %s (%s)", ttl, s.lim.SessionMax, EnvSessionMax)
	}
	netCfg, profile, err := checkNetwork(a.Allow)
	if err != nil {
		return zero, "", err
	}
	handle := "mcp-" + sandbox.NewID()[:8]
	t0 := time.Now()
	sb, err := s.rt.Up(ctx, runtime.UpOptions{
		Name: handle, Image: a.Template, CPUs: cpus, MemoryMiB: mem, TTL: ttl,
		Transient: true, // held by this server: it dies with it
		Profile:   string(profile),
		Network:   netCfg,
	})
	if err != nil {
		return zero, "", upError(a.Template, err)
	}
	now := time.Now()
	b := &box{
		handle: sb.Name, id: sb.ID, template: templateName(a.Template), cpus: cpus, mem: mem,
		created: now, expires: t0.Add(ttl), hold: sb.Hold, lastUsed: now,
	}
	if sb.State != nil {
		b.image = sb.State.Image.Name
	}
	s.mu.Lock()
	closing := s.closing
	if !closing {
		s.boxes[b.handle] = b
	}
	s.mu.Unlock()
	if closing {
		s.destroy(b.handle, b.id, b.hold, "server shutting down")
		return zero, "", errors.New("the mvm MCP server is shutting down; the sandbox was destroyed")
	}
	info := s.info(*b)
	info.Status = sandbox.Running
	info.BootMS = time.Since(t0).Milliseconds()
	text := fmt.Sprintf("created sandbox %s (template %s, %d cpu, %d MiB, no network) in %s\nexpires at %s; destroyed after %s idle\npass \"sandbox\": %q to run_command, run_code and files_*",
		info.Sandbox, info.Template, cpus, mem, ms(info.BootMS), info.ExpiresAt.Format(time.RFC3339), s.lim.SessionIdle, info.Sandbox)
	return info, text, nil
}

// checkTemplate keeps MCP to named templates and built images: a
// directory path would have the server read host files into an image.
func checkTemplate(t string) error {
	if len(t) > 256 || strings.ContainsAny(t, "/\\\x00") || strings.HasPrefix(t, ".") || strings.HasPrefix(t, "~") {
		return fmt.Errorf("template %q: give a template (minimal, python, node, debian, ...) or the name or digest of an image built with mvmctl build; build directories are not accepted through MCP", t)
	}
	return nil
}

func templateName(t string) string {
	if t == "" {
		return "minimal"
	}
	return t
}

// upError explains a failed boot.
func upError(template string, err error) error {
	if errors.Is(err, context.Canceled) {
		return errors.New("cancelled before the sandbox was ready; nothing was left running")
	}
	return fmt.Errorf("could not start a sandbox (template %s): %s", templateName(template), describe(err))
}

func (s *Server) info(b box) SandboxInfo {
	return SandboxInfo{
		Sandbox: b.handle, SandboxID: b.id, Template: b.template, Image: b.image,
		CPUs: b.cpus, MemoryMiB: b.mem, Network: "none", Profile: Profile,
		Created: b.created.UTC(), ExpiresAt: b.expires.UTC(),
		IdleSeconds: int64(time.Since(b.lastUsed) / time.Second),
		IdleLimitS:  int64(s.lim.SessionIdle / time.Second),
	}
}

func (s *Server) sandboxList(ctx context.Context, _ ListArgs) (ListResult, string, error) {
	res := ListResult{Sandboxes: []SandboxInfo{}, Limits: s.limitsInfo()}
	for _, b := range s.boxesSorted() {
		info := s.info(b)
		if b.active > 0 {
			info.IdleSeconds = 0
		}
		st, err := s.rt.Get(b.id)
		switch {
		case errors.Is(err, runtime.ErrNotFound):
			// Removed behind our back (ttl passed in the supervisor, or
			// `mvmctl down`): forget it.
			s.mu.Lock()
			cur, ok := s.boxes[b.handle]
			if ok && cur.id == b.id {
				s.forgetLocked(cur, "it was stopped outside this server or its ttl passed")
			}
			s.mu.Unlock()
			if ok && cur.id == b.id && cur.hold != nil {
				cur.hold.Close()
			}
			continue
		case err != nil:
			info.Status = "unknown: " + describe(err)
		default:
			info.Status = st.Status
			if st.Reason != "" {
				info.Status += ": " + st.Reason
			}
		}
		res.Sandboxes = append(res.Sandboxes, info)
	}
	s.mu.Lock()
	res.Inflight = s.inflight
	s.mu.Unlock()
	var b strings.Builder
	if len(res.Sandboxes) == 0 {
		b.WriteString("no sandboxes (sandbox_create makes one)\n")
	}
	for _, i := range res.Sandboxes {
		fmt.Fprintf(&b, "%s  %s  template=%s  %d MiB  idle %ds of %ds  expires %s\n",
			i.Sandbox, i.Status, i.Template, i.MemoryMiB, i.IdleSeconds, i.IdleLimitS, i.ExpiresAt.Format(time.RFC3339))
	}
	fmt.Fprintf(&b, "tool calls running: %d of %d; memory ceiling %d MiB", res.Inflight, s.lim.MaxInflight, s.lim.MemCeilingMiB)
	return res, b.String(), nil
}

func (s *Server) sandboxDestroy(ctx context.Context, a SandboxArgs) (DestroyResult, string, error) {
	if a.Sandbox == "" {
		return DestroyResult{}, "", errors.New(`"sandbox" is required`)
	}
	s.mu.Lock()
	b, ok := s.boxes[a.Sandbox]
	if !ok {
		for _, c := range s.boxes {
			if c.id == a.Sandbox {
				b, ok = c, true
			}
		}
	}
	why, gone := s.gone[a.Sandbox]
	if ok {
		s.forgetLocked(b, "it was destroyed by sandbox_destroy")
	}
	s.mu.Unlock()
	if !ok {
		if gone {
			return DestroyResult{Sandbox: a.Sandbox, Destroyed: false}, fmt.Sprintf("sandbox %s was already gone: %s", a.Sandbox, why), nil
		}
		return DestroyResult{}, "", fmt.Errorf("unknown sandbox %q: this server only destroys sandboxes it created (sandbox_list shows them)", a.Sandbox)
	}
	if err := s.destroy(b.handle, b.id, b.hold, "sandbox_destroy"); err != nil {
		return DestroyResult{}, "", fmt.Errorf("destroy %s: %s", b.handle, describe(err))
	}
	return DestroyResult{Sandbox: b.handle, Destroyed: true}, "destroyed sandbox " + b.handle, nil
}

// ---- running things ----

type execSpec struct {
	argv      []string
	cwd       string
	stdin     string
	timeout   time.Duration
	template  string // transient only
	memoryMiB int    // transient only
}

func callTimeout(d Duration) (time.Duration, error) {
	t := d.D()
	if t == 0 {
		return DefaultCallTimeout, nil
	}
	if t > MaxCallTimeout {
		return 0, fmt.Errorf("timeout %s: at most %s", t, MaxCallTimeout)
	}
	return t, nil
}

func (s *Server) runCommand(ctx context.Context, a RunCommandArgs) (RunResult, string, error) {
	var zero RunResult
	var argv []string
	switch {
	case a.Command != "" && len(a.Argv) > 0:
		return zero, "", errors.New("give command (a shell line) or argv (a list), not both")
	case a.Command != "":
		argv = []string{"sh", "-c", a.Command}
	case len(a.Argv) > 0:
		if a.Argv[0] == "" {
			return zero, "", errors.New("argv[0] must name a program")
		}
		argv = a.Argv
	default:
		return zero, "", errors.New("give command (a shell line) or argv (a list)")
	}
	if a.Sandbox != "" && (a.Template != "" || a.MemoryMiB != 0) {
		return zero, "", errors.New("template and memory_mib apply only without sandbox (to the fresh sandbox); a sandbox's own were set by sandbox_create")
	}
	timeout, err := callTimeout(a.Timeout)
	if err != nil {
		return zero, "", err
	}
	return s.execute(ctx, a.Sandbox, execSpec{argv: argv, cwd: a.Cwd, stdin: a.Stdin, timeout: timeout,
		template: a.Template, memoryMiB: a.MemoryMiB})
}

// languages maps run_code's language to its interpreter and the template
// of a transient sandbox for it.
var languages = map[string]struct {
	argv     func(code string) []string
	template string
}{
	"python": {func(c string) []string { return []string{"python3", "-c", c} }, "python"},
	"node":   {func(c string) []string { return []string{"node", "-e", c} }, "node"},
	"shell":  {func(c string) []string { return []string{"sh", "-c", c} }, ""},
}

func (s *Server) runCode(ctx context.Context, a RunCodeArgs) (RunResult, string, error) {
	var zero RunResult
	lang, ok := languages[a.Language]
	if !ok {
		return zero, "", fmt.Errorf("language %q: want python, node or shell", a.Language)
	}
	if len(a.Code) > MaxCodeBytes {
		return zero, "", fmt.Errorf("code is %d bytes, more than %d: write it with files_write and run it with run_command", len(a.Code), MaxCodeBytes)
	}
	if strings.IndexByte(a.Code, 0) >= 0 {
		return zero, "", errors.New("code contains a NUL byte")
	}
	if a.Sandbox != "" && a.MemoryMiB != 0 {
		return zero, "", errors.New("memory_mib applies only without sandbox (to the fresh sandbox)")
	}
	timeout, err := callTimeout(a.Timeout)
	if err != nil {
		return zero, "", err
	}
	return s.execute(ctx, a.Sandbox, execSpec{argv: lang.argv(a.Code), stdin: a.Stdin, timeout: timeout,
		template: lang.template, memoryMiB: a.MemoryMiB})
}

// execute runs argv in the named sandbox, or in a transient one.
func (s *Server) execute(ctx context.Context, handle string, e execSpec) (RunResult, string, error) {
	if len(e.stdin) > MaxStdinBytes {
		return RunResult{}, "", fmt.Errorf("stdin is %d bytes, more than %d", len(e.stdin), MaxStdinBytes)
	}
	if handle == "" {
		return s.executeTransient(ctx, e)
	}
	b, err := s.acquire(handle)
	if err != nil {
		return RunResult{}, "", err
	}
	defer s.release(b)
	res := RunResult{Sandbox: b.handle, SandboxID: b.id}
	if err := s.execIn(ctx, b.id, e, &res); err != nil {
		return RunResult{}, "", err
	}
	return res, res.Text(), nil
}

func (s *Server) executeTransient(ctx context.Context, e execSpec) (RunResult, string, error) {
	if err := checkTemplate(e.template); err != nil {
		return RunResult{}, "", err
	}
	mem, err := s.memory(e.memoryMiB, e.template)
	if err != nil {
		return RunResult{}, "", err
	}
	t0 := time.Now()
	sb, err := s.rt.Up(ctx, runtime.UpOptions{
		Name: "mcp-run-" + sandbox.NewID()[:8], Image: e.template, MemoryMiB: mem,
		TTL: s.lim.SessionMax, Transient: true, Profile: Profile,
	})
	if err != nil {
		return RunResult{}, "", upError(e.template, err)
	}
	s.mu.Lock()
	s.transient[sb.ID] = sb
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		_, mine := s.transient[sb.ID] // Shutdown may have taken it over
		delete(s.transient, sb.ID)
		s.mu.Unlock()
		if mine {
			s.destroy(sb.Name, sb.ID, sb.Hold, "transient run finished")
		}
	}()
	res := RunResult{Sandbox: sb.Name, SandboxID: sb.ID, Transient: true, BootMS: time.Since(t0).Milliseconds()}
	if err := s.execIn(ctx, sb.ID, e, &res); err != nil {
		return RunResult{}, "", err
	}
	return res, res.Text(), nil
}

// execIn runs one command and shapes its result; a timeout is a result
// (timed_out, exit_code 124), not an error.
func (s *Server) execIn(ctx context.Context, id string, e execSpec, res *RunResult) error {
	out, errb := newCapBuffer(OutputCapBytes), newCapBuffer(OutputCapBytes)
	opts := runtime.ExecOptions{Argv: e.argv, Cwd: e.cwd, Stdout: out, Stderr: errb}
	if e.stdin != "" {
		opts.Stdin = strings.NewReader(e.stdin)
	}
	ectx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	t0 := time.Now()
	exit, err := s.rt.Exec(ectx, id, opts)
	res.DurationMS = time.Since(t0).Milliseconds()
	shapeRun(res, out, errb)
	if err != nil {
		if ctx.Err() == nil && errors.Is(ectx.Err(), context.DeadlineExceeded) {
			res.TimedOut, res.ExitCode = true, 124
			return nil
		}
		if ctx.Err() != nil {
			return errors.New("cancelled; the command was killed")
		}
		return execError(e.argv, err)
	}
	res.ExitCode, res.Signal = exit.ExitCode, exit.Signal
	res.AuditID = exit.AuditID
	if len(exit.Receipt) > 0 && json.Valid(exit.Receipt) {
		res.Receipt = json.RawMessage(exit.Receipt)
	}
	return nil
}

// execError explains why a command could not run.
func execError(argv []string, err error) error {
	prog := ""
	if len(argv) > 0 {
		prog = argv[0]
	}
	switch {
	case agentapi.IsRefused(err):
		return fmt.Errorf("refused by the sandbox's image: %s", describe(err))
	case agentapi.IsNotFound(err):
		return fmt.Errorf("%s: command not found in the sandbox (does its template have it? run_code python needs the python template, node the node template)", prog)
	case agentapi.IsPermissionDenied(err):
		return fmt.Errorf("%s: permission denied in the sandbox", prog)
	case errors.Is(err, runtime.ErrNotRunning), errors.Is(err, runtime.ErrNotFound):
		return fmt.Errorf("the sandbox is not running: %s", describe(err))
	}
	return fmt.Errorf("could not run the command: %s", describe(err))
}

// ---- files ----

func (s *Server) filesWrite(ctx context.Context, a FilesWriteArgs) (FilesWriteResult, string, error) {
	var zero FilesWriteResult
	var data []byte
	switch {
	case a.Content != "" && a.ContentBase64 != "":
		return zero, "", errors.New("give content (text) or content_base64 (bytes), not both")
	case a.ContentBase64 != "":
		if len(a.ContentBase64) > MaxWriteBytes/3*4+8 {
			return zero, "", fmt.Errorf("content_base64 decodes to more than %d bytes", MaxWriteBytes)
		}
		b, err := decodeBase64(a.ContentBase64)
		if err != nil {
			return zero, "", err
		}
		data = b
	default:
		data = []byte(a.Content)
	}
	if len(data) > MaxWriteBytes {
		return zero, "", fmt.Errorf("content is %d bytes, more than %d", len(data), MaxWriteBytes)
	}
	b, err := s.acquire(a.Sandbox)
	if err != nil {
		return zero, "", err
	}
	defer s.release(b)
	resp, err := s.rt.FsWrite(ctx, b.id, a.Path, bytes.NewReader(data), runtime.FsWriteOptions{Parents: true})
	if err != nil {
		return zero, "", fileError("write", a.Path, err)
	}
	n := int64(len(data))
	if resp != nil && resp.Bytes > 0 {
		n = resp.Bytes
	}
	path := a.Path
	if resp != nil && resp.Info != nil && resp.Info.Path != "" {
		path = resp.Info.Path
	}
	return FilesWriteResult{Sandbox: b.handle, Path: path, Bytes: n}, fmt.Sprintf("wrote %d bytes to %s in sandbox %s", n, path, b.handle), nil
}

func fileError(op, p string, err error) error {
	if agentapi.IsRefused(err) {
		return fmt.Errorf("refused: %s", describe(err))
	}
	if errors.Is(err, runtime.ErrNotRunning) || errors.Is(err, runtime.ErrNotFound) {
		return fmt.Errorf("the sandbox is not running: %s", describe(err))
	}
	msg := describe(err)
	if !strings.Contains(msg, p) {
		msg = p + ": " + msg
	}
	return fmt.Errorf("%s %s", op, msg)
}

// errEnough stops a read once max_bytes are kept.
var errEnough = errors.New("enough bytes")

type limitWriter struct {
	buf   bytes.Buffer
	limit int
	hit   bool
}

func (w *limitWriter) Write(p []byte) (int, error) {
	room := w.limit - w.buf.Len()
	if len(p) <= room {
		return w.buf.Write(p)
	}
	w.buf.Write(p[:max(room, 0)])
	w.hit = true
	return max(room, 0), errEnough
}

func (s *Server) filesRead(ctx context.Context, a FilesReadArgs) (FilesReadResult, string, error) {
	var zero FilesReadResult
	limit := a.MaxBytes
	switch {
	case limit == 0:
		limit = DefaultReadBytes
	case limit < 0 || limit > MaxReadBytes:
		return zero, "", fmt.Errorf("max_bytes %d: must be between 1 and %d", limit, MaxReadBytes)
	}
	b, err := s.acquire(a.Sandbox)
	if err != nil {
		return zero, "", err
	}
	defer s.release(b)
	fi, err := s.rt.FsStat(ctx, b.id, a.Path)
	if err != nil {
		return zero, "", fileError("read", a.Path, err)
	}
	if fi.Type == "dir" {
		return zero, "", fmt.Errorf("read %s: is a directory; use files_list", a.Path)
	}
	w := &limitWriter{limit: limit}
	_, err = s.rt.FsRead(ctx, b.id, a.Path, w)
	if err != nil && !w.hit {
		return zero, "", fileError("read", a.Path, err)
	}
	data := w.buf.Bytes()
	res := FilesReadResult{Sandbox: b.handle, Path: fi.Path, Size: fi.Size, Bytes: int64(len(data)),
		Truncated: w.hit || int64(len(data)) < fi.Size}
	if res.Path == "" {
		res.Path = a.Path
	}
	text := data
	if res.Truncated {
		text = trimPartialRune(data)
	}
	var msg string
	if utf8.Valid(text) {
		res.Content = string(text)
		res.Bytes = int64(len(text))
		msg = fmt.Sprintf("%s (%d bytes):\n%s", res.Path, res.Size, res.Content)
	} else {
		res.ContentBase64 = encodeBase64(data)
		msg = fmt.Sprintf("%s (%d bytes) is not UTF-8 text; returned as content_base64", res.Path, res.Size)
	}
	if res.Truncated {
		msg += fmt.Sprintf("\n[truncated: %d of %d bytes returned; raise max_bytes (at most %d) for more]", res.Bytes, res.Size, MaxReadBytes)
	}
	return res, msg, nil
}

func (s *Server) filesList(ctx context.Context, a FilesListArgs) (FilesListResult, string, error) {
	var zero FilesListResult
	b, err := s.acquire(a.Sandbox)
	if err != nil {
		return zero, "", err
	}
	defer s.release(b)
	ls, err := s.rt.FsList(ctx, b.id, a.Path)
	if err != nil {
		return zero, "", fileError("list", a.Path, err)
	}
	res := FilesListResult{Sandbox: b.handle, Path: a.Path, Entries: []FileEntry{}, Truncated: ls.Truncated}
	var t strings.Builder
	fmt.Fprintf(&t, "%s in sandbox %s:\n", a.Path, b.handle)
	for _, e := range ls.Entries {
		fe := FileEntry{Name: e.Name, Type: e.Type, Size: e.Size, Mode: fmt.Sprintf("%04o", e.Mode),
			Modified: time.Unix(0, e.MtimeUnixNano).UTC(), LinkTarget: e.LinkTarget}
		res.Entries = append(res.Entries, fe)
		name := fe.Name
		if fe.Type == "dir" {
			name += "/"
		} else if fe.LinkTarget != "" {
			name += " -> " + fe.LinkTarget
		}
		fmt.Fprintf(&t, "%-7s %s %10d  %s\n", fe.Type, fe.Mode, fe.Size, name)
	}
	if len(res.Entries) == 0 {
		t.WriteString("(empty)\n")
	}
	if res.Truncated {
		fmt.Fprintf(&t, "[truncated: the directory has more than %d entries]\n", len(res.Entries))
	}
	return res, t.String(), nil
}
