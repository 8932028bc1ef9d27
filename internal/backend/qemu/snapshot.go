package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Saving and restoring a VM's memory and device state (QEMU migration to a
// file). The whole of guest RAM travels in the stream: docs/decisions.md
// says why, with the numbers.
//
// Save: the caller stops the guest (Pause); SaveState hands QEMU the open
// file over QMP (getfd), migrates to it and waits for the migration to end,
// with a deadline. The guest stays stopped; Resume continues it (QEMU
// takes its disks back after the migration) or Stop ends it.
//
// Restore: Start with Spec.Incoming set starts QEMU with `-incoming defer
// -S`, the state file open on a descriptor; CompleteIncoming loads it and
// waits; the guest then waits, stopped, for Resume. Its agent is still in
// the channel session it had when it was saved: the host resets it
// (agentapi.HostReset).

// incomingFD is the descriptor QEMU finds Spec.Incoming on: the one after
// the console's (ExtraFiles[1]).
const incomingFD = consoleFD + 1

// migrationPoll is how often a running migration is polled.
const migrationPoll = 10 * time.Millisecond

type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	RAM       *struct {
		Transferred int64 `json:"transferred"`
		Total       int64 `json:"total"`
	} `json:"ram"`
}

// waitMigration polls query-migrate until the migration completed or
// failed, or ctx ends (then the migration is cancelled).
func waitMigration(ctx context.Context, q *qmp, what string) (*migrationInfo, error) {
	for {
		out, err := q.run(ctx, "query-migrate", nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		var info migrationInfo
		if err := json.Unmarshal(out, &info); err != nil {
			return nil, fmt.Errorf("%s: query-migrate: %w", what, err)
		}
		switch info.Status {
		case "completed":
			return &info, nil
		case "failed", "cancelled":
			desc := info.ErrorDesc
			if desc == "" {
				desc = info.Status
			}
			return nil, fmt.Errorf("%s failed: %s", what, desc)
		}
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			q.run(cctx, "migrate_cancel", nil)
			cancel()
			return nil, fmt.Errorf("%s did not finish in time (status %q): %w", what, info.Status, ctx.Err())
		case <-time.After(migrationPoll):
		}
	}
}

// SaveState writes the stopped guest's memory and device state to path
// (created, mode 0600; it must not exist) and syncs it. The guest must have
// been stopped with Pause; it stays stopped. It returns the bytes written.
func (m *Machine) SaveState(ctx context.Context, path string) (int64, error) {
	q, err := m.monitor(ctx)
	if err != nil {
		return 0, err
	}
	st, err := m.status(ctx, q)
	if err != nil {
		return 0, err
	}
	if st == "running" {
		return 0, errors.New("save state: the guest is running; stop it first")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, fmt.Errorf("save state: %w", err)
	}
	defer f.Close()
	// QEMU's default bandwidth cap (32 MiB/s) is for live migration over a
	// network; a stopped guest to a local file goes as fast as it can.
	if _, err := q.run(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}); err != nil {
		return 0, fmt.Errorf("save state: %w", err)
	}
	const fdName = "mvm-save"
	if err := q.sendFD(ctx, fdName, f); err != nil {
		return 0, fmt.Errorf("save state: %w", err)
	}
	if _, err := q.run(ctx, "migrate", map[string]any{"uri": "fd:" + fdName}); err != nil {
		return 0, fmt.Errorf("save state: %w", err)
	}
	if _, err := waitMigration(ctx, q, "save state"); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("save state: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), f.Close()
}

// CompleteIncoming loads the state file the machine was started with
// (Spec.Incoming) and waits until it is loaded. The guest stays stopped
// until Resume.
func (m *Machine) CompleteIncoming(ctx context.Context) error {
	if !m.incoming {
		return errors.New("restore: the machine was not started from a saved state")
	}
	q, err := m.monitor(ctx)
	if err != nil {
		return err
	}
	if _, err := q.run(ctx, "migrate-incoming", map[string]any{"uri": fmt.Sprintf("fd:%d", incomingFD)}); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if _, err := waitMigration(ctx, q, "restore"); err != nil {
		select {
		case <-m.Done():
			return fmt.Errorf("restore: qemu exited: %v", m.ExitErr())
		default:
		}
		return err
	}
	return nil
}

// status is QEMU's run state (running, paused, postmigrate, ...).
func (m *Machine) status(ctx context.Context, q *qmp) (string, error) {
	out, err := q.run(ctx, "query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return "", fmt.Errorf("query-status: %w", err)
	}
	return st.Status, nil
}

// sendFD passes f to QEMU under name (QMP getfd with SCM_RIGHTS).
func (q *qmp) sendFD(ctx context.Context, name string, f *os.File) error {
	uc, ok := q.conn.(*net.UnixConn)
	if !ok {
		return errors.New("qmp: passing a file needs a unix socket")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetDeadline(dl)
		defer q.conn.SetDeadline(time.Time{})
	}
	b, _ := json.Marshal(map[string]any{"execute": "getfd", "arguments": map[string]any{"fdname": name}})
	oob := unix.UnixRights(int(f.Fd()))
	if _, _, err := uc.WriteMsgUnix(append(b, '\n'), oob, nil); err != nil {
		return fmt.Errorf("qmp getfd: %w", err)
	}
	for {
		msg, err := q.readMessage()
		if err != nil {
			return fmt.Errorf("qmp getfd: %w", err)
		}
		if msg.Event != "" {
			continue
		}
		if msg.Error != nil {
			return fmt.Errorf("qmp getfd: %s: %s", msg.Error.Class, msg.Error.Desc)
		}
		return nil
	}
}
