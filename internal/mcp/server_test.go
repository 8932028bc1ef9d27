package mcp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// fakeRuntime stands in for internal/runtime: no VMs. "block" as argv[0]
// runs until cancelled; anything else prints its argv.
type fakeRuntime struct {
	mu      sync.Mutex
	live    map[string]runtime.UpOptions // by id
	files   map[string][]byte            // id + path
	ups     int
	upOpts  []runtime.UpOptions // every Up, in order
	downs   []string
	holds   int
	started chan string              // argv[0] of each exec, when set
	gate    chan struct{}            // "gate" commands and "slow" images wait for it
	downed  map[string]chan struct{} // closed when the sandbox is destroyed
	// snapshots by tag; snapBytes is the size a save reports (default 1 MiB)
	snaps     map[string]runtime.SnapshotInfo
	snapBytes int64
	removed   []string
}

func newFake() *fakeRuntime {
	return &fakeRuntime{live: map[string]runtime.UpOptions{}, files: map[string][]byte{}, gate: make(chan struct{}),
		downed: map[string]chan struct{}{}, snaps: map[string]runtime.SnapshotInfo{}}
}

// knownImages stands in for the image cache: templates and built images.
func knownImages(name string) (int, error) {
	switch name {
	case "", "minimal", "python", "node", "slow", "broken":
		return 0, nil
	case "big":
		return 1024, nil
	}
	return 0, fmt.Errorf("no image named %q", name)
}

type fakeHold struct {
	f    *fakeRuntime
	once sync.Once
}

func (h *fakeHold) Close() error {
	h.once.Do(func() { h.f.mu.Lock(); h.f.holds--; h.f.mu.Unlock() })
	return nil
}

// Up admits what it is asked, as the runtime does: the plan it returns
// holds the profile and network of the options.
func (f *fakeRuntime) Up(ctx context.Context, o runtime.UpOptions) (*runtime.Sandbox, error) {
	if o.Image == "broken" {
		return nil, fmt.Errorf("%w: unknown image", runtime.ErrBoot)
	}
	f.mu.Lock()
	f.ups++
	f.upOpts = append(f.upOpts, o)
	f.mu.Unlock()
	if o.Image == "slow" {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	pl := &plan.Plan{RunProfile: plan.Profile(o.RunProfile), ImageProfile: "dev", Network: o.PlanNetwork()}
	if o.FromSnapshot != "" {
		in, ok := f.snaps[o.FromSnapshot]
		if !ok {
			return nil, snapshot.ErrNotFound
		}
		pl = &plan.Plan{RunProfile: plan.Restrictive, ImageProfile: "dev", Network: plan.Network{Mode: plan.NetNone},
			Resources: plan.Resources{CPUs: in.Meta.Match.CPUs, MemoryMiB: in.Meta.Match.MemoryMiB}}
	}
	id := sandbox.NewID()
	f.live[id] = o
	f.downed[id] = make(chan struct{})
	f.holds++
	return &runtime.Sandbox{ID: id, Name: o.Name, Hold: &fakeHold{f: f},
		State: &sandbox.State{ID: id, Name: o.Name, Status: sandbox.Running, Image: sandbox.ImageRef{Name: "minimal"}},
		Plan:  pl}, nil
}

func (f *fakeRuntime) SaveSnapshot(ctx context.Context, id, tag string) (*snapshot.Meta, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o, ok := f.live[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", runtime.ErrNotFound, id)
	}
	size := f.snapBytes
	if size == 0 {
		size = 1 << 20
	}
	m := snapshot.Meta{Tag: tag, Match: snapshot.Match{MemoryMiB: o.MemoryMiB, CPUs: o.CPUs}, Files: []snapshot.File{{Name: "memory", Size: size}}}
	f.snaps[tag] = runtime.SnapshotInfo{Tag: tag, Meta: m, Bytes: size}
	return &m, nil
}

func (f *fakeRuntime) ListSnapshots() ([]runtime.SnapshotInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []runtime.SnapshotInfo
	for _, in := range f.snaps {
		out = append(out, in)
	}
	return out, nil
}

func (f *fakeRuntime) RemoveSnapshot(tag string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.snaps[tag]; !ok {
		return snapshot.ErrNotFound
	}
	delete(f.snaps, tag)
	f.removed = append(f.removed, tag)
	return nil
}

// Run is runtime.Run over the fake: boot, one command, Down then the hold.
func (f *fakeRuntime) Run(ctx context.Context, o runtime.RunOptions) (*runtime.RunResult, error) {
	o.Up.Transient = true
	sb, err := f.Up(ctx, o.Up)
	if err != nil {
		return nil, err
	}
	defer func() {
		f.Down(context.Background(), sb.ID)
		sb.Hold.Close()
	}()
	if o.Exec.Timeout == 0 {
		o.Exec.Timeout = o.Timeout
	}
	res := &runtime.RunResult{SandboxID: sb.ID, Name: sb.Name}
	exit, err := f.Exec(ctx, sb.ID, o.Exec)
	if errors.Is(err, runtime.ErrTimeout) {
		res.TimedOut = true
	}
	res.Exit = exit
	return res, err
}

func (f *fakeRuntime) running(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.live[id]
	return ok
}

func (f *fakeRuntime) Exec(ctx context.Context, id string, o runtime.ExecOptions) (*runtime.ExecResult, error) {
	if !f.running(id) {
		return nil, fmt.Errorf("%w: %s", runtime.ErrNotFound, id)
	}
	if f.started != nil {
		f.started <- o.Argv[0]
	}
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	f.mu.Lock()
	downed := f.downed[id]
	f.mu.Unlock()
	if o.Argv[0] == "block" { // until cancelled, timed out or destroyed
		select {
		case <-ctx.Done():
		case <-downed:
			return nil, errors.New("the sandbox stopped")
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w after %s", runtime.ErrTimeout, o.Timeout)
		}
		return nil, ctx.Err()
	}
	if o.Argv[0] == "gate" {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if o.Argv[0] == "missing" {
		return nil, status.Error(codes.NotFound, "missing: not found")
	}
	fmt.Fprint(o.Stdout, strings.Join(o.Argv, " "))
	if o.Stdin != nil {
		io.Copy(o.Stdout, o.Stdin)
	}
	fmt.Fprint(o.Stderr, "warn")
	return &runtime.ExecResult{ExecResult: agentapi.ExecResult{ExitCode: 3}, AuditID: "1:ab",
		Receipt: []byte(`{"payload":{"exit_code":3},"signature":"x"}`)}, nil
}

func (f *fakeRuntime) Down(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.live[id]; !ok {
		return runtime.ErrNotFound
	}
	delete(f.live, id)
	close(f.downed[id])
	f.downs = append(f.downs, id)
	return nil
}

func (f *fakeRuntime) Get(id string) (*sandbox.State, error) {
	if !f.running(id) {
		return nil, runtime.ErrNotFound
	}
	return &sandbox.State{ID: id, Status: sandbox.Running}, nil
}

func (f *fakeRuntime) FsStat(ctx context.Context, id, p string) (*runtime.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.files[id+p]
	if !ok {
		return nil, &agentapi.FsError{Kind: agentapi.FsNotFound, Path: p}
	}
	return &runtime.FileInfo{Path: p, Name: p[strings.LastIndexByte(p, '/')+1:], Type: "file", Size: int64(len(b)), Mode: 0o644}, nil
}

func (f *fakeRuntime) FsList(ctx context.Context, id, p string) (*runtime.DirList, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := &runtime.DirList{}
	for k, b := range f.files {
		if name, ok := strings.CutPrefix(k, id+strings.TrimSuffix(p, "/")+"/"); ok {
			out.Entries = append(out.Entries, runtime.FileInfo{Name: name, Type: "file", Size: int64(len(b)), Mode: 0o644})
		}
	}
	return out, nil
}

func (f *fakeRuntime) FsRead(ctx context.Context, id, p string, w io.Writer) (int64, error) {
	f.mu.Lock()
	b := f.files[id+p]
	f.mu.Unlock()
	n, err := w.Write(b)
	return int64(n), err
}

func (f *fakeRuntime) FsWrite(ctx context.Context, id, p string, rd io.Reader, o runtime.FsWriteOptions) (*runtime.WriteResult, error) {
	b, _ := io.ReadAll(rd)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.files[id+p] = b
	return &runtime.WriteResult{Bytes: int64(len(b))}, nil
}

// harness runs a Server over in-memory transports with an SDK client.
type harness struct {
	t    *testing.T
	srv  *Server
	rt   *fakeRuntime
	cs   *sdk.ClientSession
	done chan error
	eof  io.Closer
}

func start(t *testing.T, lim Limits, mod func(*Options)) *harness {
	t.Helper()
	rt := newFake()
	o := Options{Runtime: rt, Limits: lim, MaxCPUs: 2, ReapInterval: 20 * time.Millisecond, ResolveImage: knownImages}
	if testing.Verbose() {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if mod != nil {
		mod(&o)
	}
	srv := New(o)
	// Pipes, as on stdio: closing the client's writer is the server's EOF.
	sr, cw := io.Pipe()
	cr, sw := io.Pipe()
	st := &sdk.IOTransport{Reader: sr, Writer: sw}
	ct := &sdk.IOTransport{Reader: cr, Writer: cw}
	h := &harness{t: t, srv: srv, rt: rt, done: make(chan error, 1), eof: cw}
	go func() { h.done <- srv.Run(context.Background(), st) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := sdk.NewClient(&sdk.Implementation{Name: "test", Version: "1"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.cs = cs
	t.Cleanup(func() { h.close() })
	return h
}

// close ends the session (the server sees EOF) and waits for the server.
func (h *harness) close() {
	h.eof.Close()
	defer h.cs.Close()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("server: %v", err)
		}
		h.done <- nil
	case <-time.After(10 * time.Second):
		h.t.Fatal("server did not stop after the client closed")
	}
}

func (h *harness) call(name string, args map[string]any) (*sdk.CallToolResult, map[string]any) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := h.cs.CallTool(ctx, &sdk.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		h.t.Fatalf("%s: %v", name, err)
	}
	var m map[string]any
	if res.StructuredContent != nil {
		b, _ := json.Marshal(res.StructuredContent)
		json.Unmarshal(b, &m)
	}
	return res, m
}

func text(r *sdk.CallToolResult) string {
	var b strings.Builder
	for _, c := range r.Content {
		if t, ok := c.(*sdk.TextContent); ok {
			b.WriteString(t.Text)
		}
	}
	return b.String()
}

func (h *harness) mustOK(name string, args map[string]any) map[string]any {
	h.t.Helper()
	res, m := h.call(name, args)
	if res.IsError {
		h.t.Fatalf("%s: tool error: %s", name, text(res))
	}
	return m
}

func (h *harness) mustFail(name string, args map[string]any, want string) {
	h.t.Helper()
	res, _ := h.call(name, args)
	if !res.IsError || !strings.Contains(text(res), want) {
		h.t.Fatalf("%s: want a tool error containing %q, got isError=%v %q", name, want, res.IsError, text(res))
	}
}

func TestToolsList(t *testing.T) {
	h := start(t, DefaultLimits(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := h.cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*sdk.Tool{}
	for _, tl := range res.Tools {
		got[tl.Name] = tl
	}
	for name, args := range map[string][]string{
		"sandbox_create": {"template", "ttl", "allow", "cpus", "memory_mib", "snapshot"}, "sandbox_list": {}, "sandbox_destroy": {"sandbox"},
		"run_command": {"sandbox", "command", "argv", "timeout"}, "run_code": {"sandbox", "language", "code"},
		"files_write": {"sandbox", "path", "content", "content_base64"}, "files_read": {"sandbox", "path"},
		"files_list": {"sandbox", "path"}, "sandbox_snapshot": {"sandbox"},
	} {
		tl := got[name]
		if tl == nil {
			t.Errorf("tool %s missing", name)
			continue
		}
		b, _ := json.Marshal(tl.InputSchema)
		for _, a := range args {
			if !strings.Contains(string(b), `"`+a+`"`) {
				t.Errorf("%s: argument %s missing from %s", name, a, b)
			}
		}
		if tl.OutputSchema == nil {
			t.Errorf("%s has no output schema", name)
		}
	}
	if len(got) != 9 {
		t.Errorf("%d tools, want 9", len(got))
	}
}

func TestSandboxFlow(t *testing.T) {
	h := start(t, DefaultLimits(), nil)
	c := h.mustOK("sandbox_create", map[string]any{"ttl": "10m", "memory_mib": 256})
	sb, _ := c["sandbox"].(string)
	if !strings.HasPrefix(sb, "mcp-") || c["memory_mib"].(float64) != 256 || c["network"] != "none" || c["run_profile"] != "restrictive" {
		t.Fatalf("create: %v", c)
	}
	opts := h.rt.live[c["sandbox_id"].(string)]
	if opts.RunProfile != "restrictive" || !opts.Transient || opts.TTL != 10*time.Minute || opts.MemoryMiB != 256 {
		t.Fatalf("up options: %+v", opts)
	}
	w := h.mustOK("files_write", map[string]any{"sandbox": sb, "path": "/w/a.txt", "content": "héllo"})
	if w["bytes"].(float64) != 6 {
		t.Fatalf("write: %v", w)
	}
	h.mustOK("files_write", map[string]any{"sandbox": sb, "path": "/w/b.bin", "content_base64": "AP8="})
	r := h.mustOK("run_command", map[string]any{"sandbox": sb, "command": "cat /w/a.txt", "stdin": "IN"})
	if r["exit_code"].(float64) != 3 || r["stdout"] != "sh -c cat /w/a.txtIN" || r["stderr"] != "warn" || r["audit_id"] != "1:ab" || r["transient"] != false {
		t.Fatalf("run: %v", r)
	}
	if rc, _ := r["receipt"].(map[string]any); rc == nil || rc["signature"] != "x" {
		t.Fatalf("receipt: %v", r["receipt"])
	}
	rd := h.mustOK("files_read", map[string]any{"sandbox": sb, "path": "/w/a.txt"})
	if rd["content"] != "héllo" || rd["size"].(float64) != 6 || rd["truncated"] != false {
		t.Fatalf("read: %v", rd)
	}
	rd = h.mustOK("files_read", map[string]any{"sandbox": sb, "path": "/w/b.bin"})
	if rd["content_base64"] != "AP8=" || rd["content"] != nil {
		t.Fatalf("read binary: %v", rd)
	}
	rd = h.mustOK("files_read", map[string]any{"sandbox": sb, "path": "/w/a.txt", "max_bytes": 2})
	if rd["content"] != "h" || rd["truncated"] != true {
		t.Fatalf("read capped: %v", rd)
	}
	ls := h.mustOK("files_list", map[string]any{"sandbox": sb, "path": "/w"})
	if n := len(ls["entries"].([]any)); n != 2 {
		t.Fatalf("list: %v", ls)
	}
	l := h.mustOK("sandbox_list", nil)
	if n := len(l["sandboxes"].([]any)); n != 1 {
		t.Fatalf("sandbox_list: %v", l)
	}
	h.mustFail("files_read", map[string]any{"sandbox": sb, "path": "/nope"}, "/nope")
	h.mustFail("run_command", map[string]any{"sandbox": sb, "argv": []string{"missing"}}, "command not found")
	h.mustFail("run_command", map[string]any{"sandbox": sb}, "give command")
	h.mustFail("run_command", map[string]any{"sandbox": sb, "command": "x", "argv": []string{"y"}}, "not both")
	h.mustFail("run_command", map[string]any{"sandbox": "mcp-nope", "command": "x"}, "unknown sandbox")
	h.mustFail("files_write", map[string]any{"sandbox": sb, "path": "/x", "content": "a", "content_base64": "YQ=="}, "not both")
	d := h.mustOK("sandbox_destroy", map[string]any{"sandbox": sb})
	if d["destroyed"] != true {
		t.Fatalf("destroy: %v", d)
	}
	h.mustFail("run_command", map[string]any{"sandbox": sb, "command": "x"}, "destroyed by sandbox_destroy")
	if h.rt.running(c["sandbox_id"].(string)) {
		t.Fatal("sandbox still running after destroy")
	}
}

func TestTransientRuns(t *testing.T) {
	h := start(t, DefaultLimits(), nil)
	r := h.mustOK("run_code", map[string]any{"language": "python", "code": "print(1)"})
	if r["transient"] != true || r["stdout"] != "python3 -c print(1)" {
		t.Fatalf("run_code: %v", r)
	}
	r = h.mustOK("run_command", map[string]any{"argv": []string{"echo", "x"}, "template": "node"})
	if r["transient"] != true {
		t.Fatalf("run_command: %v", r)
	}
	h.rt.mu.Lock()
	live, ups, holds := len(h.rt.live), h.rt.ups, h.rt.holds
	h.rt.mu.Unlock()
	if live != 0 || ups != 2 || holds != 0 {
		t.Fatalf("after transient runs: live=%d ups=%d holds=%d", live, ups, holds)
	}
	h.mustFail("run_code", map[string]any{"language": "ruby", "code": "1"}, "language")
	h.mustFail("run_code", map[string]any{"language": "shell", "code": strings.Repeat("x", MaxCodeBytes+1)}, "files_write")
	h.mustFail("run_command", map[string]any{"command": "x", "template": "/etc"}, "host directories are not accepted")
	h.mustFail("run_command", map[string]any{"command": "x", "template": "broken"}, "could not start a sandbox")
}

func TestMemoryCeiling(t *testing.T) {
	h := start(t, Limits{SessionIdle: time.Minute, SessionMax: time.Hour, MaxInflight: 2, MemCeilingMiB: 256},
		func(o *Options) {
			o.ResolveImage = knownImages
		})
	h.mustFail("sandbox_create", map[string]any{"memory_mib": 512}, "memory ceiling of 256 MiB")
	h.mustFail("run_command", map[string]any{"command": "true", "memory_mib": 1024}, "memory ceiling")
	h.mustFail("run_code", map[string]any{"language": "shell", "code": "true", "memory_mib": 300}, "memory ceiling")
	h.mustFail("sandbox_create", map[string]any{"template": "big"}, `image "big" asks for 1024 MiB`)
	h.mustFail("sandbox_create", map[string]any{"cpus": 3}, "cpus 3")
	h.mustFail("sandbox_create", map[string]any{"ttl": "2h"}, "MVM_MCP_SESSION_MAX")
	h.mustFail("sandbox_create", map[string]any{"allow": []string{"not a host!"}}, "refused: allow")
	if h.rt.ups != 0 {
		t.Fatalf("%d boots were dispatched; refusals must come first", h.rt.ups)
	}
	// With no memory_mib the default is lowered to the ceiling.
	c := h.mustOK("sandbox_create", nil)
	if c["memory_mib"].(float64) != 256 {
		t.Fatalf("default memory under a 256 MiB ceiling: %v", c["memory_mib"])
	}
}

func TestBusy(t *testing.T) {
	h := start(t, Limits{SessionIdle: time.Minute, SessionMax: time.Hour, MaxInflight: 1, MemCeilingMiB: 1024}, nil)
	h.rt.started = make(chan string, 4)
	c := h.mustOK("sandbox_create", nil)
	sb := c["sandbox"].(string)
	first := make(chan *sdk.CallToolResult, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		res, _ := h.cs.CallTool(ctx, &sdk.CallToolParams{Name: "run_command", Arguments: map[string]any{"sandbox": sb, "argv": []string{"block"}}})
		first <- res
	}()
	select {
	case <-h.rt.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the blocking call did not start")
	}
	// A busy refusal costs nothing: no boot, no exec.
	ups := h.rt.upCount()
	h.mustFail("run_command", map[string]any{"sandbox": sb, "command": "true"}, "busy")
	h.mustFail("run_command", map[string]any{"command": "true"}, "busy")
	h.mustFail("sandbox_create", nil, "MVM_MCP_MAX_INFLIGHT=1")
	if n := h.rt.upCount(); n != ups || len(h.rt.started) != 0 {
		t.Fatalf("busy calls were dispatched: %d boots (want %d), %d execs", n, ups, len(h.rt.started))
	}
	// Listing and destroying are never refused as busy.
	l := h.mustOK("sandbox_list", nil)
	if l["inflight"].(float64) != 1 {
		t.Fatalf("inflight: %v", l["inflight"])
	}
	cancel() // the client cancels the blocking call
	<-first
	var last string
	testenv.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool {
		res, _ := h.call("run_command", map[string]any{"sandbox": sb, "command": "true"})
		last = text(res)
		return !res.IsError
	}, func() string { return "a call to be admitted after the blocking call ended: " + last })
}

// fakeClock is the clock of idle and lifetime expiry in tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func (h *harness) listed() []string {
	h.t.Helper()
	var out []string
	for _, s := range h.mustOK("sandbox_list", nil)["sandboxes"].([]any) {
		out = append(out, s.(map[string]any)["sandbox"].(string))
	}
	return out
}

// TestIdleAndMaxReaping: on an injected clock, a sandbox idle for
// SessionIdle goes and one in use stays; at SessionMax both go, in use or
// not. Each step asserts the outcome of one reaping pass, not a duration.
func TestIdleAndMaxReaping(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	h := start(t, Limits{SessionIdle: time.Minute, SessionMax: 2 * time.Minute, MaxInflight: 4, MemCeilingMiB: 1024},
		func(o *Options) { o.Now, o.ReapInterval = clk.Now, time.Hour })
	h.rt.started = make(chan string, 4)
	idle := h.mustOK("sandbox_create", nil)["sandbox"].(string)
	busy := h.mustOK("sandbox_create", nil)["sandbox"].(string)
	// Keep busy in use: a blocked call protects it from the idle reaper,
	// but not from the maximum lifetime.
	blocked := make(chan *sdk.CallToolResult, 1)
	go func() {
		res, _ := h.cs.CallTool(context.Background(), &sdk.CallToolParams{Name: "run_command", Arguments: map[string]any{"sandbox": busy, "argv": []string{"block"}, "timeout": 300}})
		blocked <- res
	}()
	<-h.rt.started

	clk.Add(time.Minute - time.Second)
	h.srv.reap(clk.Now())
	if l := h.listed(); len(l) != 2 {
		t.Fatalf("reaped before the idle limit: %v", l)
	}
	clk.Add(time.Second)
	h.srv.reap(clk.Now())
	if l := h.listed(); len(l) != 1 || l[0] != busy {
		t.Fatalf("at the idle limit: listed %v, want only %s (in use)", l, busy)
	}
	h.mustFail("files_list", map[string]any{"sandbox": idle, "path": "/"}, "idle for 1m0s (MVM_MCP_SESSION_IDLE)")

	clk.Add(time.Minute)
	h.srv.reap(clk.Now())
	if l := h.listed(); len(l) != 0 {
		t.Fatalf("at the maximum lifetime: listed %v", l)
	}
	h.mustFail("files_list", map[string]any{"sandbox": busy, "path": "/"}, "lifetime")
	testenv.Eventually(t, 5*time.Second, 20*time.Millisecond, func() bool {
		h.rt.mu.Lock()
		defer h.rt.mu.Unlock()
		return len(h.rt.live) == 0
	}, testenv.Msg("both destroyed in the runtime"))
	if res := <-blocked; res == nil || !res.IsError {
		t.Fatalf("the call on the destroyed sandbox: %v", res)
	}
}

// TestShutdownDestroysEverything: when the client closes stdin, calls
// already read still get their answers, then every sandbox goes.
func TestShutdownDestroysEverything(t *testing.T) {
	h := start(t, DefaultLimits(), nil)
	h.rt.started = make(chan string, 4)
	for i := 0; i < 3; i++ {
		h.mustOK("sandbox_create", nil)
	}
	// A transient run still running when stdin closes: it is answered,
	// and its sandbox goes with it.
	gated := make(chan *sdk.CallToolResult, 1)
	go func() {
		res, _ := h.cs.CallTool(context.Background(), &sdk.CallToolParams{Name: "run_command", Arguments: map[string]any{"argv": []string{"gate"}}})
		gated <- res
	}()
	<-h.rt.started
	h.eof.Close()
	close(h.rt.gate)
	if res := <-gated; res == nil || res.IsError || text(res) == "" {
		t.Fatalf("the call in flight at EOF was not answered: %v", res)
	}
	h.close()
	h.rt.mu.Lock()
	defer h.rt.mu.Unlock()
	if len(h.rt.live) != 0 || h.rt.holds != 0 {
		t.Fatalf("after EOF: %d sandboxes live, %d holds open", len(h.rt.live), h.rt.holds)
	}
}

func TestShutdownByContext(t *testing.T) {
	rt := newFake()
	srv := New(Options{Runtime: rt, Limits: DefaultLimits()})
	st, ct := sdk.NewInMemoryTransports()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, st) }()
	cs, err := sdk.NewClient(&sdk.Implementation{Name: "t", Version: "1"}, nil).Connect(context.Background(), ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	if _, err := cs.CallTool(cctx, &sdk.CallToolParams{Name: "sandbox_create", Arguments: map[string]any{}}); err != nil {
		t.Fatal(err)
	}
	go cs.CallTool(context.Background(), &sdk.CallToolParams{Name: "run_command", Arguments: map[string]any{"argv": []string{"block"}}})
	testenv.Eventually(t, 5*time.Second, 20*time.Millisecond, func() bool {
		rt.mu.Lock()
		defer rt.mu.Unlock()
		return len(rt.live) == 2
	}, testenv.Msg("two sandboxes"))
	cancel() // SIGTERM in mvmctl
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if len(rt.live) != 0 {
		t.Fatalf("%d sandboxes left", len(rt.live))
	}
}

func TestSandboxRemovedOutside(t *testing.T) {
	h := start(t, DefaultLimits(), nil)
	c := h.mustOK("sandbox_create", nil)
	h.rt.Down(context.Background(), c["sandbox_id"].(string)) // `mvmctl down`, or its ttl in the supervisor
	if l := h.mustOK("sandbox_list", nil)["sandboxes"].([]any); len(l) != 0 {
		t.Fatalf("a removed sandbox is still listed: %v", l)
	}
	h.mustFail("run_command", map[string]any{"sandbox": c["sandbox"], "command": "true"}, "stopped outside this server")
	h.rt.mu.Lock()
	defer h.rt.mu.Unlock()
	if h.rt.holds != 0 {
		t.Fatalf("%d holds left open", h.rt.holds)
	}
}
