package mcp

import "time"

// Tool arguments and results: the Go types the SDK infers each tool's
// input and output JSON schema from.
// CreateArgs are sandbox_create's arguments.
type CreateArgs struct {
	Template  string   `json:"template,omitempty" jsonschema:"template or built image to boot: minimal (default; busybox sh), python, node, debian, or the name of an image built with mvmctl build"`
	TTL       Duration `json:"ttl,omitempty" jsonschema:"lifetime: seconds, or a duration like 10m; default and maximum MVM_MCP_SESSION_MAX"`
	Allow     []string `json:"allow,omitempty" jsonschema:"network allowlist: host names, each optionally with :port (443 by default); no IP addresses, wildcards or host.mvm.internal; empty means no network"`
	CPUs      int      `json:"cpus,omitempty" jsonschema:"virtual CPUs (default 1, at most the host's CPU count)"`
	MemoryMiB int      `json:"memory_mib,omitempty" jsonschema:"guest memory in MiB (default 512, at most MVM_MCP_MEM_CEILING_MIB)"`
	Snapshot  string   `json:"snapshot,omitempty" jsonschema:"start a copy of this snapshot instead of booting a template: one sandbox_snapshot returned, or one the operator allows; then template, cpus, memory_mib and allow must be empty (the snapshot's apply)"`
}

// SandboxInfo describes one sandbox of this server.
type SandboxInfo struct {
	Sandbox      string    `json:"sandbox" jsonschema:"the handle: pass it as sandbox to the other tools"`
	SandboxID    string    `json:"sandbox_id"`
	Status       string    `json:"status"`
	Template     string    `json:"template"`
	Image        string    `json:"image,omitempty"`
	CPUs         int       `json:"cpus"`
	MemoryMiB    int       `json:"memory_mib"`
	Network      string    `json:"network" jsonschema:"the network the sandbox was admitted with: none (no network device) or allowlist"`
	Allow        []string  `json:"allow,omitempty" jsonschema:"with network allowlist: the HOST:PORT entries it may reach"`
	RunProfile   string    `json:"run_profile" jsonschema:"the run profile it was admitted under: restrictive, or standard with an allowlist"`
	ImageProfile string    `json:"image_profile,omitempty" jsonschema:"the profile of the image it booted: dev, or sealed (no ad-hoc code)"`
	Created      time.Time `json:"created"`
	ExpiresAt    time.Time `json:"expires_at" jsonschema:"when the sandbox is destroyed whatever happens (ttl)"`
	IdleSeconds  int64     `json:"idle_seconds" jsonschema:"seconds since the last tool call on it"`
	IdleLimitS   int64     `json:"idle_limit_seconds" jsonschema:"it is destroyed after this many idle seconds"`
	BootMS       int64     `json:"boot_ms,omitempty"`
}

// SandboxArgs name one sandbox.
type SandboxArgs struct {
	Sandbox string `json:"sandbox" jsonschema:"the handle returned by sandbox_create"`
}

// SnapshotResult is sandbox_snapshot's result.
type SnapshotResult struct {
	Sandbox  string `json:"sandbox"`
	Snapshot string `json:"snapshot" jsonschema:"the snapshot's tag: pass it as snapshot to sandbox_create"`
	Bytes    int64  `json:"bytes"`
	// What this server has saved, and may.
	Saved       int   `json:"snapshots_saved"`
	MaxSaved    int   `json:"max_snapshots"`
	SavedBytes  int64 `json:"snapshot_bytes"`
	MaxSavedMiB int   `json:"max_snapshot_mib"`
}

// ListArgs are sandbox_list's (no) arguments.
type ListArgs struct{}

// LimitsInfo reports the server's limits.
type LimitsInfo struct {
	SessionIdleS   int64 `json:"session_idle_seconds"`
	SessionMaxS    int64 `json:"session_max_seconds"`
	MaxInflight    int   `json:"max_inflight"`
	MemCeilingMiB  int   `json:"mem_ceiling_mib"`
	MaxSandboxes   int   `json:"max_sandboxes" jsonschema:"sandboxes alive at once (booting ones and transient runs included)"`
	TotalMemMiB    int   `json:"total_mem_mib" jsonschema:"the most memory all those sandboxes may have together"`
	OutputCapBytes int   `json:"output_cap_bytes"`
	MaxSnapshots   int   `json:"max_snapshots" jsonschema:"snapshots sandbox_snapshot may save in this server's life (0: none)"`
	SnapshotMiB    int   `json:"snapshot_mib" jsonschema:"the most all those snapshots may take together"`
}

// ListResult is sandbox_list's result.
type ListResult struct {
	Sandboxes   []SandboxInfo `json:"sandboxes"`
	Inflight    int           `json:"inflight" jsonschema:"tool calls counted against max_inflight that are running now"`
	Live        int           `json:"live_sandboxes" jsonschema:"sandboxes counted against max_sandboxes now (booting ones and transient runs included)"`
	MemInUseMiB int           `json:"mem_in_use_mib" jsonschema:"their memory, counted against total_mem_mib"`
	Limits      LimitsInfo    `json:"limits"`
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
