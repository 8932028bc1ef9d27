package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"syscall"

	"github.com/mvm-sandbox/mvm/internal/image/cache"
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
	// Hashing the memory file, the QEMU binary and the initramfs costs
	// ~150 ms per restore; a snapshot verified before whose files (and
	// the machine's) have the same stamps since is not hashed again.
	vpath := filepath.Join(r.readyRoot(), tag+readyVerifiedExt)
	want, stampErr := readyStamps(sn, spec)
	var had readyVerified
	if stampErr != nil || sandbox.ReadJSON(vpath, &had) != nil || !had.equal(want) {
		os.Remove(vpath)
		if err := sn.VerifyFiles(snapshot.DiskFile); err != nil {
			return err
		}
		if err := r.checkMatch(fmt.Sprintf("ready snapshot %s", tag), sn.Meta.Match, *spec, p); err != nil {
			return err
		}
		if stampErr == nil {
			if b, err := json.Marshal(want); err == nil {
				cache.WriteFile(vpath, b, cache.FileMode)
			}
		}
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

// readyVerifiedExt ends the name of the record of a ready snapshot's last
// full verification: the stamps of its files and of the machine's.
const readyVerifiedExt = ".verified.json"

// stamp identifies one version of a file without reading it: a write, a
// replacement or a touch changes its inode, size, mtime or ctime, and the
// file's owner cannot set ctime back.
type stamp struct {
	Dev, Ino     uint64
	Size         int64
	Mtime, Ctime int64
}

func stampFile(path string) (stamp, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return stamp{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.Mode().IsRegular() {
		return stamp{}, errors.New("not a regular file")
	}
	return stamp{Dev: uint64(st.Dev), Ino: st.Ino, Size: fi.Size(), Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano()}, nil
}

// readyVerified is what a full verification of a ready snapshot saw.
type readyVerified struct {
	Files   map[string]stamp `json:"files"` // the sidecar, its signature and every listed file
	Entries int              `json:"entries"`
	VMM     string           `json:"vmm"`
	Initrd  stamp            `json:"initrd"`
	Kernel  stamp            `json:"kernel"`
	Match   string           `json:"match"`
}

func (v readyVerified) equal(w readyVerified) bool {
	return maps.Equal(v.Files, w.Files) && v.Entries == w.Entries && v.VMM == w.VMM &&
		v.Initrd == w.Initrd && v.Kernel == w.Kernel && v.Match == w.Match
}

// readyStamps is what a verification of sn for spec would see now.
func readyStamps(sn *snapshot.Snapshot, spec *sandbox.Spec) (readyVerified, error) {
	v := readyVerified{Files: map[string]stamp{}, VMM: qemuStamp(), Match: sn.Meta.Match.Key()}
	ents, err := os.ReadDir(sn.Dir)
	if err != nil {
		return v, err
	}
	v.Entries = len(ents)
	names := []string{snapshot.MetaFile, snapshot.SigFile}
	for _, f := range sn.Meta.Files {
		names = append(names, f.Name)
	}
	for _, n := range names {
		if v.Files[n], err = stampFile(sn.Path(n)); err != nil {
			return v, err
		}
	}
	if v.Initrd, err = stampFile(spec.VM.Initrd); err != nil {
		return v, err
	}
	if v.Kernel, err = stampFile(spec.VM.Kernel); err != nil {
		return v, err
	}
	return v, nil
}
