package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// The lifecycle lock serialises what changes a sandbox's life: pause (to
// disk or in memory), resume, snapshot save and down. Two of them at once
// on one sandbox raced on its saved state (a resume sent to the supervisor
// in the middle of a pause to disk continued a guest whose memory was
// already saved; a down removed the directory a resume was restoring in).
//
// It is a flock(2) on a file in the sandbox's directory, held by the
// process that runs the operation (the CLI, the MCP server), never by a
// supervisor: a SIGKILLed holder releases it with its last descriptor, and
// the supervisors' own fault paths (a supervisor that dies mid-save) never
// wait on it. The descriptor is close-on-exec, so a supervisor spawned
// under the lock does not keep it.
const lifecycleLockFile = "lifecycle.lock"

// lifecycleLockWait is how long an operation waits for another one on the
// same sandbox before it gives up with a busy error.
var lifecycleLockWait = time.Minute

// lifecyclePoll is how often a waiter tries the lock.
const lifecyclePoll = 50 * time.Millisecond

// lockLifecycle takes the lifecycle lock of the sandbox in dir for op
// (a word: "pause", "resume", ...). It waits for an operation in progress
// up to lifecycleLockWait (or ctx), then fails with a busy error that names
// it. A sandbox removed meanwhile is not found. The caller runs unlock.
func lockLifecycle(ctx context.Context, dir, name, op string) (unlock func(), err error) {
	path := filepath.Join(dir, lifecycleLockFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s was removed", ErrNotFound, name)
		}
		return nil, fmt.Errorf("%s %s: lifecycle lock: %w", op, name, err)
	}
	deadline := time.NewTimer(lifecycleLockWait)
	defer deadline.Stop()
	tick := time.NewTicker(lifecyclePoll)
	defer tick.Stop()
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("%s %s: lifecycle lock: %w", op, name, err)
		}
		select {
		case <-tick.C:
			continue
		case <-ctx.Done():
		case <-deadline.C:
		}
		holder := lockHolder(f)
		f.Close()
		if ctx.Err() != nil {
			return nil, errdefs.New(errdefs.KindCanceled, fmt.Errorf("%s %s: gave up waiting for %s: %w", op, name, holder, ctx.Err()))
		}
		return nil, errdefs.Errorf(errdefs.KindBusy, "sandbox %s is busy: %s is in progress (waited %s); retry when it has finished", name, holder, lifecycleLockWait)
	}
	// A down that held the lock removed the directory: this lock is on a
	// file nobody else will open again.
	var a, b syscall.Stat_t
	if syscall.Fstat(int(f.Fd()), &a) != nil || syscall.Stat(path, &b) != nil || a.Ino != b.Ino || a.Dev != b.Dev {
		f.Close()
		return nil, fmt.Errorf("%w: %s was removed meanwhile", ErrNotFound, name)
	}
	// Say who holds it, for the busy error of the next one.
	if f.Truncate(0) == nil {
		f.WriteAt([]byte(fmt.Sprintf("%s %d\n", op, os.Getpid())), 0)
	}
	return func() { f.Close() }, nil
}

// lockHolder describes the operation that holds the lock f is open on,
// from what it wrote into the file ("a pause (pid 123)").
func lockHolder(f *os.File) string {
	b := make([]byte, 64)
	n, _ := f.ReadAt(b, 0)
	fields := strings.Fields(string(b[:n]))
	if len(fields) != 2 {
		return "another operation"
	}
	what, ok := lifecycleOps[fields[0]]
	if !ok {
		return "another operation"
	}
	if _, err := strconv.Atoi(fields[1]); err != nil {
		return what
	}
	return fmt.Sprintf("%s (pid %s)", what, fields[1])
}

// lifecycleOps names the operations that take the lifecycle lock.
var lifecycleOps = map[string]string{
	"pause":    "a pause",
	"resume":   "a resume",
	"snapshot": "a snapshot save",
	"down":     "a removal (down)",
}

// supervisorAlive reports whether pid is the live supervisor of the
// sandbox in dir: a process whose command line is this sandbox's
// `mvmctl __supervise DIR` (DIR naming its id), not merely one that has
// the pid its state records. After a host reboot that pid belongs to
// anything, another sandbox's supervisor included, and taking it for
// this sandbox's made a paused sandbox look running and `down` kill it.
func supervisorAlive(pid int, dir string) bool {
	if !sandbox.ProcessAlive(pid, SupervisorCommand) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] == SupervisorCommand && filepath.Base(args[i+1]) == filepath.Base(dir) {
			return true
		}
	}
	return false
}

// waitSupervisorGone waits up to d for the supervisor of the sandbox in
// dir, pid, to exit.
func waitSupervisorGone(pid int, dir string, d time.Duration) {
	deadline := time.Now().Add(d)
	for supervisorAlive(pid, dir) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}
