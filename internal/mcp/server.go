// Package mcp is mvm's Model Context Protocol server (`mvmctl mcp stdio`),
// built on the official MCP Go SDK. A model client calls tools; every tool
// call that runs something runs it inside an mvm microVM through
// internal/runtime, never in the host process.
//
// Sandboxes are explicit handles (sandbox_create → "sandbox"), bounded by
// an idle timeout, a maximum lifetime, a limit on concurrent tool calls and
// a memory ceiling (limits.go). Every sandbox the server creates is tied to
// it: when the client closes stdin, or the server gets SIGTERM, they are
// all destroyed; if the server dies without cleaning up, each sandbox's
// supervisor notices its holder went away and removes it.
package mcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	goruntime "runtime"
	"sync"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// Runtime is what the server needs of internal/runtime; *runtime.Runtime
// implements it (tests substitute a fake).
type Runtime interface {
	Up(ctx context.Context, o runtime.UpOptions) (*runtime.Sandbox, error)
	Exec(ctx context.Context, nameOrID string, o runtime.ExecOptions) (*runtime.ExecResult, error)
	Down(ctx context.Context, nameOrID string) error
	Get(nameOrID string) (*sandbox.State, error)
	FsStat(ctx context.Context, name, p string) (*runtime.FileInfo, error)
	FsList(ctx context.Context, name, p string) (*runtime.DirList, error)
	FsRead(ctx context.Context, name, p string, w io.Writer) (int64, error)
	FsWrite(ctx context.Context, name, p string, rd io.Reader, o runtime.FsWriteOptions) (*runtime.WriteResult, error)
	Run(ctx context.Context, o runtime.RunOptions) (*runtime.RunResult, error)
	SaveSnapshot(ctx context.Context, nameOrID, tag string) (*snapshot.Meta, error)
	ListSnapshots() ([]runtime.SnapshotInfo, error)
	RemoveSnapshot(tag string) error
}

var _ Runtime = (*runtime.Runtime)(nil)

// Profile is the run profile of every sandbox made through MCP.
const Profile = "restrictive"

// Options configure a Server.
type Options struct {
	Runtime Runtime
	Limits  Limits
	// Logger receives operational logs (never code, argv values, stdin,
	// output or file contents). Nil discards them.
	Logger  *slog.Logger
	Version string
	// ResolveImage says whether a template argument names a template or
	// a built image (name or digest), and the memory its manifest asks for
	// (0: none, or a template not built yet), so that names and the memory
	// limits are checked before anything boots. An error refuses the name.
	// Nil accepts only the default template.
	ResolveImage func(image string) (memoryMiB int, err error)
	// MaxCPUs caps a sandbox's vCPUs; 0 means the host's CPU count.
	MaxCPUs int
	// ReapInterval is how often idle and expired sandboxes are looked for;
	// 0 derives it from the limits.
	ReapInterval time.Duration
	// ShutdownGrace bounds how long shutdown waits for running tool calls
	// after cancelling them; 0 means 30s.
	ShutdownGrace time.Duration
	// Now is the clock of idle and lifetime expiry; nil is time.Now
	// (tests inject one).
	Now func() time.Time
}

// Server is one MCP server and the sandboxes it owns.
type Server struct {
	rt           Runtime
	lim          Limits
	log          *slog.Logger
	sdk          *sdk.Server
	sem          chan struct{}
	maxCPUs      int
	resolveImage func(string) (int, error)
	reapInt      time.Duration
	grace        time.Duration
	now          func() time.Time

	base       context.Context // cancelled at shutdown: every call derives from it
	cancelBase context.CancelFunc

	mu        sync.Mutex
	boxes     map[string]*box   // by handle
	gone      map[string]string // handle → why it no longer exists
	goneOrder []string
	closing   bool
	inflight  int
	liveN     int            // sandboxes alive or booting, transient runs included (MaxSandboxes)
	liveMem   int            // their memory in MiB (TotalMemMiB)
	calls     sync.WaitGroup // tool calls running
	destroys  sync.WaitGroup // background destroys (reaper)
	snaps     snapshotState  // snapshots this server saved (snapshot.go)
}

// New builds a server; Run serves it.
func New(o Options) *Server {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	maxCPUs := o.MaxCPUs
	if maxCPUs <= 0 {
		maxCPUs = goruntime.NumCPU()
	}
	reap := o.ReapInterval
	if reap <= 0 {
		reap = min(o.Limits.SessionIdle, o.Limits.SessionMax) / 10
		reap = max(100*time.Millisecond, min(reap, 5*time.Second))
	}
	grace := o.ShutdownGrace
	if grace <= 0 {
		grace = 30 * time.Second
	}
	lim := o.Limits
	if lim.MaxInflight < 1 {
		lim.MaxInflight = 1
	}
	if lim.MaxSandboxes < 1 {
		lim.MaxSandboxes = DefaultMaxSandboxes
	}
	if lim.TotalMemMiB < 1 {
		lim.TotalMemMiB = DefaultTotalMemMiB
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	base, cancel := context.WithCancel(context.Background())
	s := &Server{
		rt: o.Runtime, lim: lim, log: log,
		sem: make(chan struct{}, lim.MaxInflight), maxCPUs: maxCPUs, resolveImage: o.ResolveImage, reapInt: reap, grace: grace, now: now,
		base: base, cancelBase: cancel,
		boxes: map[string]*box{}, gone: map[string]string{},
		snaps: snapshotState{bytes: map[string]int64{}},
	}
	sdkLog := slog.New(minLevel{log.Handler(), slog.LevelWarn}) // the SDK logs every session event at info
	if log.Enabled(context.Background(), slog.LevelDebug) {
		sdkLog = log
	}
	version := o.Version
	if version == "" {
		version = "dev"
	}
	s.sdk = sdk.NewServer(&sdk.Implementation{Name: "mvm", Title: "mvm microVM sandboxes", Version: version},
		&sdk.ServerOptions{
			Instructions: instructions,
			Logger:       sdkLog,
			Capabilities: &sdk.ServerCapabilities{Tools: &sdk.ToolCapabilities{}},
		})
	s.addTools()
	return s
}

const instructions = `Run commands and code inside mvm microVM sandboxes, never on the host.
run_code and run_command without a "sandbox" use a fresh sandbox that is destroyed afterwards.
For state across calls, sandbox_create returns a "sandbox" handle; pass it to run_command,
run_code and files_*; sandbox_list shows your sandboxes; sandbox_destroy frees one.
Sandboxes have no network unless sandbox_create is given an allowlist ("allow"); the
result of sandbox_create says which network and run profile a sandbox was admitted with.
They are destroyed when idle or too old, and all of them when this server stops. This server
caps how many sandboxes are alive at once and their total memory (sandbox_list shows both).`

// SDK returns the underlying MCP server (for tests and embedding).
func (s *Server) SDK() *sdk.Server { return s.sdk }

// Run serves one client on t until it disconnects or ctx is cancelled,
// then destroys every sandbox the server created. It returns nil on a
// clean end (EOF, or ctx cancelled by a signal).
func (s *Server) Run(ctx context.Context, t sdk.Transport) error {
	stop := context.AfterFunc(ctx, s.cancelBase) // a signal cancels running calls at once
	defer stop()
	go s.reaper()
	s.log.Info("mcp server started", "idle", s.lim.SessionIdle, "max", s.lim.SessionMax,
		"max_inflight", s.lim.MaxInflight, "mem_ceiling_mib", s.lim.MemCeilingMiB,
		"max_sandboxes", s.lim.MaxSandboxes, "total_mem_mib", s.lim.TotalMemMiB)
	err := s.sdk.Run(ctx, answerAll(t))
	s.Shutdown()
	if err != nil && (errors.Is(err, context.Canceled) || errors.Is(err, io.EOF) || errors.Is(err, sdk.ErrConnectionClosed)) {
		err = nil
	}
	return err
}

// Shutdown refuses new calls, cancels running ones, waits for them (up
// to the grace period) and destroys every sandbox the server created.
// It is idempotent.
func (s *Server) Shutdown() {
	s.mu.Lock()
	already := s.closing
	s.closing = true
	s.mu.Unlock()
	s.cancelBase()
	if already {
		s.destroys.Wait()
		return
	}
	t0 := time.Now()
	done := make(chan struct{})
	go func() { s.calls.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.grace):
		s.log.Warn("tool calls still running after shutdown grace; destroying their sandboxes anyway", "grace", s.grace)
	}
	s.mu.Lock()
	var boxes []*box
	for h, b := range s.boxes {
		boxes = append(boxes, b)
		delete(s.boxes, h)
	}
	s.mu.Unlock()
	// Transient runs tear their sandbox down themselves (runtime.Run) when
	// their call is cancelled; a call stuck past the grace period still
	// holds its sandbox only as long as this process lives (the hold).
	for _, b := range boxes {
		s.destroyAsync(b, "server shutting down")
	}
	s.destroys.Wait()
	s.removeSnapshots()
	s.log.Info("mcp server stopped", "sandboxes_destroyed", len(boxes), "cleanup", time.Since(t0).Round(time.Millisecond))
}

// destroyAsync tears a sandbox down in the background; Shutdown waits for
// every such teardown.
func (s *Server) destroyAsync(b *box, why string) {
	s.destroys.Add(1)
	go func() {
		defer s.destroys.Done()
		s.destroy(b, why)
	}()
}

// destroy removes a sandbox through the runtime, then closes its hold and
// gives its place under the caps back. Down comes first, as in
// runtime.Run: it waits for the supervisor to exit, while closing the hold
// first would start a teardown Down could not wait for.
func (s *Server) destroy(b *box, why string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := s.rt.Down(ctx, b.id)
	if errors.Is(err, runtime.ErrNotFound) {
		err = nil // the supervisor removed it first
	}
	if b.hold != nil {
		b.hold.Close()
	}
	if b.free != nil {
		b.free()
	}
	if err != nil {
		s.log.Error("destroy sandbox", "sandbox", b.handle, "id", b.id, "reason", why, "error", err)
	} else {
		s.log.Info("sandbox destroyed", "sandbox", b.handle, "id", b.id, "reason", why)
	}
	return err
}

// ---- limits at the door ----

// errBusy is the error of a call beyond MVM_MCP_MAX_INFLIGHT.
var errBusy = errors.New("busy")

// enter admits one tool call. Gated calls take a slot of the in-flight
// limit and are refused at once, never queued, when none is free.
func (s *Server) enter(gated bool) (func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, errors.New("the mvm MCP server is shutting down")
	}
	if gated {
		select {
		case s.sem <- struct{}{}:
		default:
			return nil, fmt.Errorf("%w: %d tool calls are already running, the most this server allows (%s=%d); retry when one finishes, or sandbox_list to see your sandboxes",
				errBusy, s.lim.MaxInflight, EnvMaxInflight, s.lim.MaxInflight)
		}
		s.inflight++
	}
	s.calls.Add(1)
	return func() {
		s.mu.Lock()
		if gated {
			s.inflight--
			<-s.sem
		}
		s.mu.Unlock()
		s.calls.Done()
	}, nil
}

// callContext ends with the request or with the server, whichever first.
func (s *Server) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.base, cancel)
	return ctx, func() { stop(); cancel() }
}

// sizing checks a template and resolves the memory of a sandbox of it
// against the ceiling; this runs before anything is dispatched to the
// runtime. With no request, an image's manifest decides, else
// DefaultMemoryMiB (lowered to the ceiling).
func (s *Server) sizing(img string, req int) (int, error) {
	imgMem, err := s.checkImage(img)
	if err != nil {
		return 0, err
	}
	if req == 0 && imgMem > 0 {
		if imgMem > s.lim.MemCeilingMiB {
			return 0, fmt.Errorf("refused: image %q asks for %d MiB, more than this server's memory ceiling of %d MiB (%s); nothing was started",
				img, imgMem, s.lim.MemCeilingMiB, EnvMemCeilingMiB)
		}
		return imgMem, nil
	}
	if req == 0 {
		return min(DefaultMemoryMiB, s.lim.MemCeilingMiB), nil
	}
	if req < MinMemoryMiB {
		return 0, fmt.Errorf("memory_mib %d: must be at least %d", req, MinMemoryMiB)
	}
	if req > s.lim.MemCeilingMiB {
		return 0, fmt.Errorf("refused: memory_mib %d exceeds this server's memory ceiling of %d MiB (%s); nothing was started",
			req, s.lim.MemCeilingMiB, EnvMemCeilingMiB)
	}
	return req, nil
}

// minLevel drops records below min (the SDK logs every session event at
// info level).
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(a), h.min}
}
func (h minLevel) WithGroup(n string) slog.Handler { return minLevel{h.Handler.WithGroup(n), h.min} }
