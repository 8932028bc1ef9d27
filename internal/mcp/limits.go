package mcp

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// Environment variables that bound the server. docs/mcp.md lists them with
// the defaults below; keep the two in step.
const (
	EnvSessionIdle   = "MVM_MCP_SESSION_IDLE"
	EnvSessionMax    = "MVM_MCP_SESSION_MAX"
	EnvMaxInflight   = "MVM_MCP_MAX_INFLIGHT"
	EnvMemCeilingMiB = "MVM_MCP_MEM_CEILING_MIB"
	EnvMaxSandboxes  = "MVM_MCP_MAX_SANDBOXES"
	EnvTotalMemMiB   = "MVM_MCP_TOTAL_MEM_MIB"
	// EnvSnapshots lists the operator's snapshot tags a client may start
	// clones of (sandbox_create's snapshot), comma-separated.
	EnvSnapshots = "MVM_MCP_SNAPSHOTS"
	// EnvMaxSnapshots caps the snapshots one server may save with
	// sandbox_snapshot (0, the default, disables the tool).
	EnvMaxSnapshots = "MVM_MCP_MAX_SNAPSHOTS"
	// EnvSnapshotMiB caps the bytes of those snapshots, in MiB.
	EnvSnapshotMiB = "MVM_MCP_SNAPSHOT_MIB"
)

// Defaults of the limits.
const (
	DefaultSessionIdle   = 5 * time.Minute
	DefaultSessionMax    = time.Hour
	DefaultMaxInflight   = 4
	DefaultMemCeilingMiB = 4096
	DefaultMaxSandboxes  = 8
	DefaultTotalMemMiB   = 8192
	DefaultMaxSnapshots  = 0
	DefaultSnapshotMiB   = 4096
)

// Fixed bounds: what the variables may be set to, and per-call caps.
const (
	// MinMemoryMiB is the smallest guest the runtime boots.
	MinMemoryMiB = 128
	// DefaultMemoryMiB is a sandbox's memory when the call names none
	// (lowered to the ceiling when the ceiling is smaller).
	DefaultMemoryMiB = 512
	maxMemCeilingMiB = 256 << 10
	maxInflightLimit = 1024
	maxSandboxLimit  = 1024
	maxTotalMemMiB   = 1 << 20
	maxSessionLimit  = 7 * 24 * time.Hour
	maxSnapshotLimit = 64
	maxSnapshotMiB   = 1 << 20
	maxSnapshotTags  = 64

	// OutputCapBytes caps each of stdout and stderr in a run result; the
	// rest is counted and reported as truncated.
	OutputCapBytes = 64 << 10
	// DefaultCallTimeout bounds a command when the call gives no timeout.
	DefaultCallTimeout = 60 * time.Second
	// MaxCallTimeout is the largest timeout a call may ask for.
	MaxCallTimeout = 10 * time.Minute
	// MaxCodeBytes caps run_code's code (it travels as one argv string,
	// and Linux caps one argument at 128 KiB).
	MaxCodeBytes = 100 << 10
	// MaxWriteBytes caps the decoded content of one files_write.
	MaxWriteBytes = 8 << 20
	// DefaultReadBytes and MaxReadBytes cap what files_read returns.
	DefaultReadBytes = 1 << 20
	MaxReadBytes     = 8 << 20
	// MaxStdinBytes caps run_command's stdin.
	MaxStdinBytes = 1 << 20
)

// Limits bound what one server does.
type Limits struct {
	// SessionIdle: a sandbox created through MCP with no tool call on it
	// for this long is destroyed.
	SessionIdle time.Duration
	// SessionMax: the longest such a sandbox lives, whatever its ttl.
	SessionMax time.Duration
	// MaxInflight: tool calls running at once; one more is refused as busy.
	MaxInflight int
	// MemCeilingMiB: a call whose sandbox would have more memory is
	// refused before anything boots.
	MemCeilingMiB int
	// MaxSandboxes: sandboxes alive at once, booting ones and transient
	// runs included; one more is refused before it boots.
	MaxSandboxes int
	// TotalMemMiB: the sum of the memory of those sandboxes; a sandbox
	// that would take the sum past it is refused before it boots.
	TotalMemMiB int
	// Snapshots are the operator's snapshot tags a client may clone.
	Snapshots []string
	// MaxSnapshots: snapshots sandbox_snapshot may save in this server's
	// life (0: the tool is refused).
	MaxSnapshots int
	// SnapshotMiB: their total size; a save that would pass it is refused
	// (or removed again, when its size is only known afterwards).
	SnapshotMiB int
}

// DefaultLimits are the limits with no variable set.
func DefaultLimits() Limits {
	return Limits{
		SessionIdle:   DefaultSessionIdle,
		SessionMax:    DefaultSessionMax,
		MaxInflight:   DefaultMaxInflight,
		MemCeilingMiB: DefaultMemCeilingMiB,
		MaxSandboxes:  DefaultMaxSandboxes,
		TotalMemMiB:   DefaultTotalMemMiB,
		MaxSnapshots:  DefaultMaxSnapshots,
		SnapshotMiB:   DefaultSnapshotMiB,
	}
}

// LimitsFromEnv reads the limits through getenv (os.Getenv in production).
// An unset or empty variable keeps its default; an invalid one is an
// error that names the variable, the value and what is accepted.
func LimitsFromEnv(getenv func(string) string) (Limits, error) {
	l := DefaultLimits()
	var err error
	if v := strings.TrimSpace(getenv(EnvSessionIdle)); v != "" {
		if l.SessionIdle, err = parseLimitDuration(EnvSessionIdle, v); err != nil {
			return l, err
		}
	}
	if v := strings.TrimSpace(getenv(EnvSessionMax)); v != "" {
		if l.SessionMax, err = parseLimitDuration(EnvSessionMax, v); err != nil {
			return l, err
		}
	}
	if v := strings.TrimSpace(getenv(EnvMaxInflight)); v != "" {
		if l.MaxInflight, err = parseLimitInt(EnvMaxInflight, v, 1, maxInflightLimit, ""); err != nil {
			return l, err
		}
	}
	if v := strings.TrimSpace(getenv(EnvMemCeilingMiB)); v != "" {
		if l.MemCeilingMiB, err = parseLimitInt(EnvMemCeilingMiB, v, MinMemoryMiB, maxMemCeilingMiB, " MiB"); err != nil {
			return l, err
		}
	}
	if v := strings.TrimSpace(getenv(EnvMaxSandboxes)); v != "" {
		if l.MaxSandboxes, err = parseLimitInt(EnvMaxSandboxes, v, 1, maxSandboxLimit, ""); err != nil {
			return l, err
		}
	}
	if v := strings.TrimSpace(getenv(EnvTotalMemMiB)); v != "" {
		if l.TotalMemMiB, err = parseLimitInt(EnvTotalMemMiB, v, MinMemoryMiB, maxTotalMemMiB, " MiB"); err != nil {
			return l, err
		}
	}
	if v := strings.TrimSpace(getenv(EnvMaxSnapshots)); v != "" {
		if l.MaxSnapshots, err = parseLimitInt(EnvMaxSnapshots, v, 0, maxSnapshotLimit, ""); err != nil {
			return l, err
		}
	}
	if v := strings.TrimSpace(getenv(EnvSnapshotMiB)); v != "" {
		if l.SnapshotMiB, err = parseLimitInt(EnvSnapshotMiB, v, MinMemoryMiB, maxSnapshotMiB, " MiB"); err != nil {
			return l, err
		}
	}
	if v := strings.TrimSpace(getenv(EnvSnapshots)); v != "" {
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			if t == "" {
				continue
			}
			if err := snapshot.ValidateTag(t); err != nil {
				return l, fmt.Errorf("%s=%q: %v", EnvSnapshots, v, err)
			}
			if strings.HasPrefix(t, sessionSnapshotPrefix) {
				return l, fmt.Errorf("%s=%q: %q: tags starting with %q are this server's own", EnvSnapshots, v, t, sessionSnapshotPrefix)
			}
			l.Snapshots = append(l.Snapshots, t)
		}
		if len(l.Snapshots) > maxSnapshotTags {
			return l, fmt.Errorf("%s: %d tags, at most %d", EnvSnapshots, len(l.Snapshots), maxSnapshotTags)
		}
	}
	return l, nil
}

// parseLimitDuration accepts a Go duration ("90s", "5m", "1h30m") or a
// whole number of seconds ("300").
func parseLimitDuration(name, v string) (time.Duration, error) {
	d, err := ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: %v", name, v, err)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%s=%q: must be positive", name, v)
	}
	if d < time.Second {
		return 0, fmt.Errorf("%s=%q: must be at least 1s", name, v)
	}
	if d > maxSessionLimit {
		return 0, fmt.Errorf("%s=%q: must be at most %s", name, v, maxSessionLimit)
	}
	return d, nil
}

func parseLimitInt(name, v string, lo, hi int, unit string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: want a whole number between %d and %d%s", name, v, lo, hi, unit)
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("%s=%q: must be between %d and %d%s", name, v, lo, hi, unit)
	}
	return n, nil
}

// ParseDuration accepts a Go duration ("90s", "10m") or a whole number
// of seconds ("600").
func ParseDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, fmt.Errorf("empty duration")
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 || n > int64(maxSessionLimit/time.Second)*10 {
			return 0, fmt.Errorf("%d seconds is out of range", n)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("want a duration like 90s, 5m or 1h, or a number of seconds")
	}
	return d, nil
}
