package runtime

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// Warm start on the snapshot mechanics: the store (internal/snapshot), the
// supervisor's save and restore (its "snapshot" op, spec.VM.Incoming).

// snapshotsSupported turns warm starts on (tests of the decision logic
// without QEMU flip it).
var snapshotsSupported = true

// restoreFrom makes spec (of the sandbox in dir, admitted with p) restore
// from ready snapshot tag instead of booting: the snapshot's files are
// verified against its sidecar, its machine must be the one spec
// describes, and its writable disk is copied (and checked while copied)
// into dir.
func (r *Runtime) restoreFrom(spec *sandbox.Spec, p *plan.Plan, tag, dir string) error {
	sn, err := r.readyStore().Get(tag)
	if err != nil {
		return err
	}
	if err := sn.VerifyFiles(snapshot.DiskFile); err != nil {
		return err
	}
	if err := r.checkMatch(fmt.Sprintf("ready snapshot %s", tag), sn.Meta.Match, *spec, p); err != nil {
		return err
	}
	for _, d := range spec.VM.Disks {
		if !d.ReadOnly && d.Serial == "" {
			if err := sn.CopyVerified(snapshot.DiskFile, filepath.Join(dir, sandbox.UpperDisk)); err != nil {
				return err
			}
		}
	}
	spec.VM.Incoming = sn.Path(snapshot.MemoryFile)
	spec.VM.Accel = sn.Meta.Match.Accel
	return nil
}

// unrestore undoes restoreFrom.
func (r *Runtime) unrestore(spec *sandbox.Spec) {
	spec.VM.Incoming, spec.VM.Accel = "", ""
}

// saveReady snapshots running sandbox id as tag of store.
func (r *Runtime) saveReady(ctx context.Context, id string, store *snapshot.Store, tag string) (*snapshot.Meta, error) {
	return r.SaveSnapshotIn(ctx, id, store, tag)
}
