// Package runtime is the one model of mvm that every surface (CLI, SDKs
// through the CLI, MCP) drives: resolve an image, admit a plan, boot a
// microVM under its supervisor, talk to the guest agent, tear down.
package runtime

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// Runtime operates on the sandboxes of one state directory.
type Runtime struct {
	Dirs   paths.Dirs
	Layout sandbox.Layout
	// Exe is the mvmctl binary, re-executed as each sandbox's supervisor.
	Exe string
	// Agent is the static mvm-agent binary put into guest images.
	Agent string
	// Backend is the VMM new sandboxes boot with: MVM_BACKEND read once
	// by New ("" is qemu). Each sandbox records its own in its spec,
	// plan and receipts.
	Backend string
}

// BackendEnv selects the VMM of new sandboxes: "qemu" (the default) or
// "firecracker".
const BackendEnv = "MVM_BACKEND"

// backend validates the chosen backend.
func (r *Runtime) backend() (string, error) {
	switch r.Backend {
	case "", plan.BackendQEMU:
		return plan.BackendQEMU, nil
	case plan.BackendFirecracker:
		return plan.BackendFirecracker, nil
	}
	return "", fmt.Errorf("%s=%q: want qemu (the default) or firecracker", BackendEnv, r.Backend)
}

// Errors of the runtime, in the one error model (errdefs): callers ask
// errdefs for the kind, or errors.Is for these.
var (
	ErrNotFound   = errdefs.WithReason(errdefs.KindNotFound, errdefs.ReasonSandbox, errors.New("sandbox not found"))
	ErrNotRunning = errdefs.WithReason(errdefs.KindFailedPrecondition, errdefs.ReasonNotRunning, errors.New("sandbox is not running"))
	ErrBoot       = errdefs.Guest(errors.New("boot failed"))
)

// New finds mvmctl and mvm-agent: MVM_AGENT_BIN, else mvm-agent beside
// the running executable.
func New(d paths.Dirs) (*Runtime, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("locate mvmctl: %w", err)
	}
	if p, err := filepath.EvalSymlinks(exe); err == nil {
		exe = p
	}
	agent := os.Getenv("MVM_AGENT_BIN")
	if agent == "" {
		agent = filepath.Join(filepath.Dir(exe), "mvm-agent")
	}
	return &Runtime{Dirs: d, Layout: sandbox.Layout{Root: d.State}, Exe: exe, Agent: agent, Backend: os.Getenv(BackendEnv)}, nil
}

// CheckAgent reports whether the guest agent binary is where it should be.
func (r *Runtime) CheckAgent() error {
	st, err := os.Stat(r.Agent)
	if err != nil {
		return errdefs.Errorf(errdefs.KindUnavailable, "guest agent %s not found: build it beside mvmctl (`make build`, or `go build -o DIR/ ./cmd/...`) or set MVM_AGENT_BIN", r.Agent)
	}
	if st.Mode()&0o111 == 0 {
		return errdefs.Errorf(errdefs.KindUnavailable, "guest agent %s is not executable", r.Agent)
	}
	return checkStaticAgent(r.Agent)
}

// checkStaticAgent refuses an agent linked against shared libraries: it
// runs as the guest's /init, where there are none.
func checkStaticAgent(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("guest agent %s is not a Linux executable (%v): rebuild it with `make build`", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("guest agent %s is dynamically linked (built with cgo on) and cannot run as the guest's /init: rebuild it with CGO_ENABLED=0 (`make build` does)", path)
		}
	}
	return nil
}

// BootTimeout is the default deadline from VMM start to a ready agent;
// MVM_BOOT_TIMEOUT (a Go duration or seconds) overrides it.
func BootTimeout() time.Duration {
	if v := os.Getenv("MVM_BOOT_TIMEOUT"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			return d
		}
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return time.Duration(n) * time.Second
		}
	}
	return 90 * time.Second
}

// dir resolves a sandbox name or id to its directory.
func (r *Runtime) dir(nameOrID string) (string, string, error) {
	id, ok := r.Layout.Resolve(nameOrID)
	if !ok {
		return "", "", fmt.Errorf("%w: no sandbox named %q", ErrNotFound, nameOrID)
	}
	return id, r.Layout.Dir(id), nil
}
