// Package sandbox defines what the runtime and a sandbox's supervisor share
// on disk: the directory layout, the spec the supervisor boots from, the
// state it keeps up to date, and the control protocol on its socket.
package sandbox

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/atomicfile"
	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// Files inside a sandbox directory ($MVM_STATE_DIR/sb/<id>).
const (
	SpecFile      = "spec.json"
	StateFile     = "state.json"
	AgentSocket   = "agent.sock" // every connection is proxied to the agent
	ControlSocket = "ctl.sock"   // supervisor control (JSON lines)
	SupervisorLog = "supervisor.log"
	PlanFile      = "plan.json"
	UpperDisk     = "upper.img"
	namesDir      = "names"
	sandboxesDir  = "sb"
)

// RootDirTag is the virtiofs tag of a bundle sandbox's root directory
// (plan.RootDir): always the last share of its VM.
const RootDirTag = "mvmroot"

// Statuses a sandbox can be in.
const (
	Starting = "starting"
	Running  = "running"
	Paused   = "paused"
	Stopped  = "stopped"
	Failed   = "failed"
	// Pooled is how a warm pool's idle member is listed (its supervisor
	// says running): only a claim makes it usable.
	Pooled = "pooled"
)

// Active reports whether a status means a VM should exist.
func Active(status string) bool {
	return status == Starting || status == Running || status == Paused
}

// Spec is everything the supervisor needs to boot and own one sandbox.
type Spec struct {
	ID        string       `json:"id"`
	Name      string       `json:"name"`
	Transient bool         `json:"transient"`
	VM        backend.Spec `json:"vm"`
	// BootTimeout bounds the time from VMM start to a ready agent.
	BootTimeout time.Duration `json:"boot_timeout"`
	TTL         time.Duration `json:"ttl,omitempty"`
	Image       ImageRef      `json:"image"`
	Kernel      string        `json:"kernel_digest"`
	// RunProfile is the run profile the plan was admitted under
	// (restrictive, standard, dev, permissive); state files written before
	// it was named so carry it as "profile".
	RunProfile string `json:"run_profile"`
	// Backend is the VMM chosen when the sandbox was created (qemu or
	// firecracker); the supervisor boots with it, whatever MVM_BACKEND
	// says by then. "" in old state files means qemu.
	Backend  string    `json:"backend,omitempty"`
	Network  string    `json:"network"`
	PlanHash string    `json:"plan_hash"`
	Env      []string  `json:"env_keys,omitempty"`
	Created  time.Time `json:"created"`
	// Labels are the creator's (the containerd shim: its namespace and
	// container id); `mvmctl ls` shows them.
	Labels map[string]string `json:"labels,omitempty"`
	// RootDir is the host directory that is the root of the sandbox's
	// processes (a bundle sandbox), shared read-write.
	RootDir string `json:"root_dir,omitempty"`
	// Start is how the runtime chose to start the sandbox; the
	// supervisor reports it in the boot report.
	Start StartInfo `json:"start,omitempty"`
	// TTLPaused lets the TTL run while the sandbox is paused to disk;
	// otherwise PausedFor, the time it spent paused to disk, pushes its
	// expiry back.
	TTLPaused bool          `json:"ttl_paused,omitempty"`
	PausedFor time.Duration `json:"paused_for,omitempty"`
	// FromSnapshot is the tag of the snapshot the sandbox was cloned from.
	FromSnapshot string `json:"from_snapshot,omitempty"`
}

// StartInfo says how a sandbox started: "cold" (the kernel booted) or
// "restored" (from its image's ready snapshot, named by Snapshot), and
// why a sandbox that could have been restored was not.
type StartInfo struct {
	Mode     string `json:"start,omitempty"`
	Reason   string `json:"start_reason,omitempty"`
	Snapshot string `json:"snapshot,omitempty"`
	// Pool names the warm pool the sandbox was claimed from.
	Pool string `json:"pool,omitempty"`
}

// SuspendedDir is the snapshot of a sandbox paused to disk, inside its
// directory: while it exists (complete, renamed into place), the sandbox
// is paused and no process of it runs.
const SuspendedDir = "suspended"

// ImageRef names the image a sandbox boots.
type ImageRef struct {
	Name   string `json:"name"`
	Digest string `json:"digest"`
	// ImageProfile is the artifact's profile (dev or sealed), as recorded
	// when it was built; never what the guest claims.
	ImageProfile string `json:"image_profile,omitempty"`
	// OCIDigest is the manifest digest of the OCI image the artifact was
	// made from, and ExposedPorts the ports its configuration lists
	// (informational: nothing is published from them).
	OCIDigest    string   `json:"oci_digest,omitempty"`
	ExposedPorts []string `json:"exposed_ports,omitempty"`
	// Command is what the image declares to run (an OCI image's
	// Entrypoint + Cmd, or a manifest's command) and Entrypoint its
	// leading part that `run -- ARGV` keeps, as built; the host records
	// them so that evidence names the command actually run.
	Command    []string `json:"command,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
}

// UnmarshalJSON also reads state files written before the image profile
// was named image_profile (it was "profile").
func (r *ImageRef) UnmarshalJSON(b []byte) error {
	type plain ImageRef
	var v struct {
		plain
		Legacy string `json:"profile"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*r = ImageRef(v.plain)
	if r.ImageProfile == "" {
		r.ImageProfile = v.Legacy
	}
	return nil
}

// UnmarshalJSON also reads specs written before the run profile was named
// run_profile (it was "profile").
func (s *Spec) UnmarshalJSON(b []byte) error {
	type plain Spec
	var v struct {
		plain
		Legacy string `json:"profile"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*s = Spec(v.plain)
	if s.RunProfile == "" {
		s.RunProfile = v.Legacy
	}
	return nil
}

// BootReport is readiness per component and boot timings.
type BootReport struct {
	Accel string `json:"accel"`
	// Host-side milliseconds from VMM start.
	VMMStartedMS  int64 `json:"vmm_started_ms"`
	ChannelOpenMS int64 `json:"channel_open_ms"`
	AgentReadyMS  int64 `json:"agent_ready_ms"`
	// Start is "cold" (the kernel booted) or "restored" (from a saved
	// state). StartReason says why a sandbox that could have been
	// restored from its image's ready snapshot booted cold; Snapshot names
	// the ready snapshot restored; Pool the warm pool it was claimed from.
	Start       string `json:"start,omitempty"`
	StartReason string `json:"start_reason,omitempty"`
	Snapshot    string `json:"snapshot,omitempty"`
	Pool        string `json:"pool,omitempty"`
	// RestoreMS is the time from VMM start to the loaded state.
	RestoreMS int64 `json:"restore_ms,omitempty"`
	// Claim is where the claim of a pooled sandbox spent its time.
	Claim *ClaimReport `json:"claim,omitempty"`
	// Guest-side milliseconds since the kernel started.
	Guest      map[string]int64  `json:"guest_ms,omitempty"`
	Components map[string]string `json:"components,omitempty"`
	AgentInfo  map[string]string `json:"agent,omitempty"`
}

// ClaimReport is where the claim of a pooled sandbox spent its time, in
// milliseconds. The guest's identity refresh runs after the supervisor
// answered, overlapped with the claimer's next steps: the supervisor
// holds every agent connection until it has finished.
type ClaimReport struct {
	// AdmitMS: the claimer's plan admitted (signed, ledger, audit).
	AdmitMS float64 `json:"admit_ms"`
	// HandoverMS: the supervisor took the claimer's spec over, from the
	// request to its answer (state written, claim audited).
	HandoverMS float64 `json:"handover_ms"`
	// IdentityMS: the guest's identity refresh (an RPC into the guest),
	// set once it has finished.
	IdentityMS float64 `json:"identity_ms,omitempty"`
}

// State is the supervisor's view of a sandbox, rewritten atomically.
type State struct {
	ID            string     `json:"id"`
	Name          string     `json:"name"`
	Status        string     `json:"status"`
	Reason        string     `json:"reason,omitempty"`
	Transient     bool       `json:"transient"`
	Image         ImageRef   `json:"image"`
	RunProfile    string     `json:"run_profile,omitempty"`
	Backend       string     `json:"backend,omitempty"`
	CPUs          int        `json:"cpus"`
	MemoryMiB     int        `json:"memory_mib"`
	Created       time.Time  `json:"created"`
	Expires       *time.Time `json:"expires,omitempty"`
	SupervisorPID int        `json:"supervisor_pid,omitempty"`
	// Suspended: paused to disk (Status is paused and no process runs).
	Suspended bool       `json:"suspended,omitempty"`
	VMMPID    int        `json:"vmm_pid,omitempty"`
	Boot      BootReport `json:"boot"`
	Updated   time.Time  `json:"updated"`
	// Attachments are filled in from AttachmentsFile when read through
	// the runtime; the supervisor does not write them.
	Attachments *Attachments `json:"attachments,omitempty"`
	// Labels and RootDir are filled in from the spec when read through
	// the runtime.
	Labels  map[string]string `json:"labels,omitempty"`
	RootDir string            `json:"root_dir,omitempty"`
}

// Layout locates sandboxes under a state directory.
type Layout struct{ Root string }

// Dir is the directory of sandbox id.
func (l Layout) Dir(id string) string { return filepath.Join(l.Root, sandboxesDir, id) }

// NameLink is the symlink reserving name for one sandbox.
func (l Layout) NameLink(name string) string { return filepath.Join(l.Root, namesDir, name) }

var nameRE = lazyre.New(`^[a-z0-9][a-z0-9-]{0,39}$`)

// ValidateName checks a user-chosen sandbox name.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid sandbox name %q: use 1-40 lowercase letters, digits and '-', starting with a letter or digit", name)
	}
	return nil
}

// NewID returns a fresh sandbox id.
func NewID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// ErrNameTaken says another sandbox already has the name.
var ErrNameTaken = errdefs.WithReason(errdefs.KindAlreadyExists, errdefs.ReasonSandbox, errors.New("name already in use"))

// Reserve atomically claims name for id.
func (l Layout) Reserve(name, id string) error {
	if err := os.MkdirAll(filepath.Join(l.Root, namesDir), 0o700); err != nil {
		return err
	}
	if err := os.Symlink(filepath.Join("..", sandboxesDir, id), l.NameLink(name)); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("sandbox %q: %w (choose another name, or remove that sandbox first)", name, ErrNameTaken)
		}
		return err
	}
	return nil
}

// Release drops the name reservation if it still points at id.
func (l Layout) Release(name, id string) {
	if target, err := os.Readlink(l.NameLink(name)); err == nil && filepath.Base(target) == id {
		os.Remove(l.NameLink(name))
	}
}

// Resolve finds the sandbox id for a name or id.
func (l Layout) Resolve(nameOrID string) (string, bool) {
	if target, err := os.Readlink(l.NameLink(nameOrID)); err == nil {
		id := filepath.Base(target)
		if _, err := os.Stat(l.Dir(id)); err == nil {
			return id, true
		}
	}
	if _, err := os.Stat(filepath.Join(l.Dir(nameOrID), StateFile)); err == nil && nameOrID != "" && !strings.ContainsAny(nameOrID, "/.") {
		return nameOrID, true
	}
	return "", false
}

// IDs lists the ids of every sandbox directory.
func (l Layout) IDs() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(l.Root, sandboxesDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		if e.IsDir() {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// WriteJSON writes v to path atomically.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o600)
}

// ReadJSON reads path into v.
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// ProcessAlive reports whether pid runs and its command line contains want
// (guarding against a recycled pid).
func ProcessAlive(pid int, want string) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// A zombie is not alive.
		if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
			return false
		}
	}
	return want == "" || strings.Contains(string(b), want)
}

// VMMTag is the -name QEMU gets, so a VMM can be recognised by pid.
func VMMTag(id string) string { return "mvm-" + id }
