package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Saving and restoring a VM's state with Firecracker's snapshot API
// (docs/snapshotting/snapshot-support.md; the request shapes are
// src/firecracker/swagger/firecracker.yaml).
//
// Save: the caller pauses the guest (Pause: PATCH /vm Paused); SaveState
// sends PUT /snapshot/create with a full snapshot's two files, the microVM
// state (path) and the guest memory (GuestMemoryPath(path)). The guest
// stays paused; Resume continues it.
//
// Restore: Start with Spec.Incoming set starts Firecracker without any
// boot configuration (a snapshot loads only into a fresh process);
// CompleteIncoming sends PUT /snapshot/load with resume_vm false, points
// each drive at this sandbox's file (PATCH /drives/{id}), and leaves the
// guest paused until Resume (PATCH /vm Resumed). The vsock device's
// uds_path and the sandbox's own disk are relative to Firecracker's
// working directory, so a clone binds its socket and opens its disk copy
// in its own sandbox directory without an override.
//
// None of this has run against a real Firecracker here (no KVM on the
// development host): it is tested against a fake API server that checks
// every call against the documented schema and order (fake_test.go).

// GuestMemoryName is the name of the guest memory file Firecracker writes
// beside the microVM state file (snapshot.GuestMemoryFile).
const GuestMemoryName = "guest.mem"

// GuestMemoryPath is the guest memory file that goes with the microVM
// state file statePath.
func GuestMemoryPath(statePath string) string {
	return filepath.Join(filepath.Dir(statePath), GuestMemoryName)
}

// SaveState writes a full snapshot of the paused guest: its microVM state
// to path and its memory to GuestMemoryPath(path), both created here
// (mode 0600; neither may exist) and synced. The guest must have been
// paused with Pause; it stays paused. It returns the bytes of both files.
func (m *Machine) SaveState(ctx context.Context, path string) (int64, error) {
	state, err := filepath.Abs(path)
	if err != nil {
		return 0, fmt.Errorf("save state: %w", err)
	}
	mem := GuestMemoryPath(state)
	// Created here, so that they are 0600 from the start and a leftover
	// is an error rather than silently overwritten (Firecracker truncates).
	for _, p := range []string{state, mem} {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return 0, fmt.Errorf("save state: %w", err)
		}
		f.Close()
	}
	if err := m.api.do(ctx, "PUT", "/snapshot/create", snapshotCreate{SnapshotType: "Full", SnapshotPath: state, MemFilePath: mem}); err != nil {
		os.Remove(state)
		os.Remove(mem)
		return 0, fmt.Errorf("save state: %w", m.exited(err))
	}
	// Firecracker flushes to the host file system, not to storage.
	var total int64
	for _, p := range []string{state, mem} {
		n, err := syncFile(p)
		if err != nil {
			return 0, fmt.Errorf("save state: %w", err)
		}
		if n == 0 {
			return 0, fmt.Errorf("save state: firecracker left %s empty", filepath.Base(p))
		}
		total += n
	}
	return total, nil
}

// SaveResetsChannel reports that a save ends the agent channel's
// connection. Firecracker resets the vsock device on PUT /snapshot/create
// (docs/snapshotting/snapshot-support.md, "Vsock device reset"): it closes
// the host side of every open vsock connection and sends the guest
// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, which the guest handles when it runs
// again; listening sockets stay. So the machine that was saved, not only a
// restored one, needs a new connection (DialChannel) and a new handshake
// once it continues. (QEMU's virtio-serial channel survives a save and
// has no such method.)
func (m *Machine) SaveResetsChannel() bool { return true }

func syncFile(path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// CompleteIncoming loads the saved state the machine was started with
// (Spec.Incoming and its guest memory beside it), then points every drive
// at the path this sandbox's spec gives it. The guest stays paused until
// Resume.
func (m *Machine) CompleteIncoming(ctx context.Context) error {
	spec := m.incoming
	if spec == nil {
		return errors.New("restore: the machine was not started from a saved state")
	}
	state, err := filepath.Abs(spec.Incoming)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	load := snapshotLoad{
		SnapshotPath: state,
		MemBackend:   memBackend{BackendType: "File", BackendPath: GuestMemoryPath(state)},
		ResumeVM:     false,
	}
	if err := m.api.do(ctx, "PUT", "/snapshot/load", load); err != nil {
		// Firecracker ends itself after a failed load.
		return fmt.Errorf("restore: %w", m.exited(err))
	}
	for i, d := range spec.Disks {
		id := driveID(i)
		if err := m.api.do(ctx, "PATCH", "/drives/"+id, partialDrive{DriveID: id, PathOnHost: drivePath(spec.Dir, d.Path)}); err != nil {
			return fmt.Errorf("restore: %w", m.exited(err))
		}
	}
	return nil
}

// exited adds the VMM's exit to err when it has ended.
func (m *Machine) exited(err error) error {
	if m.Process == nil {
		return err
	}
	select {
	case <-m.Done():
		return fmt.Errorf("%w (vmm exited: %v)", err, m.ExitErr())
	default:
	}
	return err
}

// checkIncoming checks that both files of a saved state are there before
// a VMM is started for it.
func checkIncoming(statePath string) error {
	for _, p := range []string{statePath, GuestMemoryPath(statePath)} {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("firecracker: restore: %w (a firecracker snapshot is a microVM state file and %s beside it)", err, GuestMemoryName)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("firecracker: restore: %s is not a regular file", p)
		}
	}
	return nil
}
