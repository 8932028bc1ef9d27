package runtime

import (
	"context"
	"errors"

	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// The snapshot mechanics warm start stands on (internal/snapshot and the
// supervisor's restore path). Wired when they land.

var snapshotsSupported = false

var errNoSnapshots = errors.New("snapshots are not supported by this build")

// restoreFrom makes spec restore from the snapshot in dir instead of
// booting.
func (r *Runtime) restoreFrom(spec *sandbox.Spec, dir string) error { return errNoSnapshots }

// unrestore undoes restoreFrom.
func (r *Runtime) unrestore(spec *sandbox.Spec) {}

// saveReady snapshots running sandbox id into dir.
func (r *Runtime) saveReady(ctx context.Context, id, dir string) error { return errNoSnapshots }
