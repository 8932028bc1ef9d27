package mcp

// Snapshots through MCP. A model may start copies of snapshots the
// operator names (MVM_MCP_SNAPSHOTS) and, when the operator enables it
// (MVM_MCP_MAX_SNAPSHOTS > 0), save snapshots of its own sandboxes under
// tags this server chooses, bounded in count and bytes
// (MVM_MCP_SNAPSHOT_MIB) and removed when the server stops. A snapshot is
// a file as large as the guest's memory plus its disk, so an unbounded
// tool would let a model fill the host's disk; pause to disk is not
// offered for the same reason (and a paused sandbox would outlive the
// idle and lifetime limits).

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// sessionSnapshotPrefix starts the tags of the snapshots this server saves.
const sessionSnapshotPrefix = "mcp-"

// snapshotState is what the server saved (under Server.mu).
type snapshotState struct {
	bytes   map[string]int64 // tag -> bytes, snapshots saved and kept
	pending int              // saves running
	used    int64            // sum of bytes
}

// mayClone says whether a client may start a copy of tag.
func (s *Server) mayClone(tag string) bool {
	if slices.Contains(s.lim.Snapshots, tag) {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.snaps.bytes[tag]
	return ok
}

// snapshotMemory is the memory a copy of tag boots with, from its record.
func (s *Server) snapshotMemory(tag string) (int, error) {
	list, err := s.rt.ListSnapshots()
	if err != nil {
		return 0, err
	}
	for _, in := range list {
		if in.Tag != tag {
			continue
		}
		if in.Invalid != "" {
			return 0, fmt.Errorf("snapshot %q cannot be used (%s); the operator must remove or replace it", tag, in.Invalid)
		}
		return in.Meta.Match.MemoryMiB, nil
	}
	return 0, fmt.Errorf("snapshot %q does not exist (any more); create a sandbox from a template instead", tag)
}

// cloneArgs checks sandbox_create's arguments when it names a snapshot,
// and returns the memory to reserve.
func (s *Server) cloneArgs(a CreateArgs) (int, error) {
	var clash []string
	if a.Template != "" {
		clash = append(clash, "template")
	}
	if a.CPUs != 0 {
		clash = append(clash, "cpus")
	}
	if a.MemoryMiB != 0 {
		clash = append(clash, "memory_mib")
	}
	if len(a.Allow) > 0 {
		clash = append(clash, "allow")
	}
	if len(clash) > 0 {
		return 0, fmt.Errorf("snapshot cannot be combined with %s: a copy of a snapshot runs the snapshot's template, resources and network; leave them out", strings.Join(clash, ", "))
	}
	if !s.mayClone(a.Snapshot) {
		return 0, fmt.Errorf("refused: snapshot %q is not one this server may start: use a tag sandbox_snapshot returned, or one the operator allows (%s); nothing was started", a.Snapshot, EnvSnapshots)
	}
	mem, err := s.snapshotMemory(a.Snapshot)
	if err != nil {
		return 0, err
	}
	if mem > s.lim.MemCeilingMiB {
		return 0, fmt.Errorf("refused: snapshot %q has %d MiB of memory, more than this server allows for one sandbox (%s=%d); nothing was started", a.Snapshot, mem, EnvMemCeilingMiB, s.lim.MemCeilingMiB)
	}
	return mem, nil
}

// reserveSnapshot takes a place for one save of a sandbox of mem MiB
// under MVM_MCP_MAX_SNAPSHOTS and MVM_MCP_SNAPSHOT_MIB. A snapshot is
// about the size of the guest's memory (plus its disk's changes), so a
// save whose memory alone would pass the byte cap is refused before it
// starts.
func (s *Server) reserveSnapshot(mem int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lim.MaxSnapshots == 0 {
		return fmt.Errorf("refused: this server saves no snapshots (the operator enables them with %s); nothing was saved", EnvMaxSnapshots)
	}
	if n := len(s.snaps.bytes) + s.snaps.pending; n >= s.lim.MaxSnapshots {
		return fmt.Errorf("refused: this server already saved %d snapshots, the most it allows (%s=%d); nothing was saved", n, EnvMaxSnapshots, s.lim.MaxSnapshots)
	}
	limit := int64(s.lim.SnapshotMiB) << 20
	if s.snaps.used+int64(mem)<<20 > limit {
		return fmt.Errorf("refused: a snapshot of this %d MiB sandbox would take this server's snapshots past %d MiB (%s=%d, %d MiB used); nothing was saved",
			mem, s.lim.SnapshotMiB, EnvSnapshotMiB, s.lim.SnapshotMiB, s.snaps.used>>20)
	}
	s.snaps.pending++
	return nil
}

func (s *Server) sandboxSnapshot(ctx context.Context, a SandboxArgs) (SnapshotResult, string, error) {
	var zero SnapshotResult
	b, err := s.acquire(a.Sandbox)
	if err != nil {
		return zero, "", err
	}
	defer s.release(b)
	if err := s.reserveSnapshot(b.mem); err != nil {
		return zero, "", err
	}
	tag := sessionSnapshotPrefix + sandbox.NewID()
	t0 := time.Now()
	meta, err := s.rt.SaveSnapshot(ctx, b.id, tag)
	size := int64(0)
	if meta != nil {
		size = meta.Size()
	}
	s.mu.Lock()
	s.snaps.pending--
	over := err == nil && s.snaps.used+size > int64(s.lim.SnapshotMiB)<<20
	if err == nil && !over {
		s.snaps.bytes[tag] = size
		s.snaps.used += size
	}
	res := SnapshotResult{Sandbox: b.handle, Snapshot: tag, Bytes: size, Saved: len(s.snaps.bytes), MaxSaved: s.lim.MaxSnapshots,
		SavedBytes: s.snaps.used, MaxSavedMiB: s.lim.SnapshotMiB}
	s.mu.Unlock()
	if err != nil {
		s.removeSnapshot(tag) // a failed save leaves nothing behind
		return zero, "", toolError(op{handle: b.handle}, err)
	}
	if over {
		s.removeSnapshot(tag)
		return zero, "", fmt.Errorf("refused: the snapshot took %d MiB, which would take this server's snapshots past %d MiB (%s); it was removed",
			size>>20, s.lim.SnapshotMiB, EnvSnapshotMiB)
	}
	text := fmt.Sprintf("saved snapshot %s of sandbox %s (%d MiB) in %s; the sandbox keeps running\npass \"snapshot\": %q to sandbox_create for a copy of it as it is now; %d of %d snapshots, %d of %d MiB used",
		tag, b.handle, size>>20, ms(time.Since(t0).Milliseconds()), tag, res.Saved, res.MaxSaved, res.SavedBytes>>20, res.MaxSavedMiB)
	return res, text, nil
}

// removeSnapshot removes a snapshot this server saved.
func (s *Server) removeSnapshot(tag string) {
	err := s.rt.RemoveSnapshot(tag)
	if err != nil && !errdefs.IsNotFound(err) {
		s.log.Error("remove snapshot", "snapshot", tag, "error", err)
	}
}

// removeSnapshots removes every snapshot this server saved (at shutdown).
func (s *Server) removeSnapshots() {
	s.mu.Lock()
	tags := make([]string, 0, len(s.snaps.bytes))
	for t := range s.snaps.bytes {
		tags = append(tags, t)
	}
	s.snaps.bytes = map[string]int64{}
	s.snaps.used = 0
	s.mu.Unlock()
	for _, t := range tags {
		s.removeSnapshot(t)
	}
}
