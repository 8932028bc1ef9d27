package mcp

// Tool registration: schemas from the argument types, the in-flight gate
// and per-call logging around every handler.

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/google/jsonschema-go/jsonschema"
)

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
			"Restrictive profile and no network unless allow is given (then the standard profile with egress to those names only); " +
			"the result reports the network and profile the sandbox was admitted with. With snapshot, it starts a copy of that snapshot instead. Refused when this server's caps on live " +
			"sandboxes or their total memory would be exceeded (sandbox_list shows them).",
		Annotations: &sdk.ToolAnnotations{DestructiveHint: ptr(false), OpenWorldHint: ptr(false)},
	}, true, nil, s.sandboxCreate, func(CreateArgs) string { return "" })

	addTool(s, &sdk.Tool{
		Name:  "sandbox_snapshot",
		Title: "Snapshot a sandbox",
		Description: "Save a sandbox's memory, processes and files as a snapshot (the sandbox keeps running) and return its tag as \"snapshot\"; " +
			"sandbox_create with that snapshot starts a copy of it as it is now, with its own identity. Refused unless the operator " +
			"enabled snapshots (MVM_MCP_MAX_SNAPSHOTS), and past that many or MVM_MCP_SNAPSHOT_MIB in total; this server's snapshots " +
			"are removed when it stops.",
		Annotations: &sdk.ToolAnnotations{DestructiveHint: ptr(false), OpenWorldHint: ptr(false)},
	}, true, nil, s.sandboxSnapshot, func(a SandboxArgs) string { return a.Sandbox })

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
