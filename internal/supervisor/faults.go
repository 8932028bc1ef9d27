package supervisor

import (
	"os"
	"syscall"
	"time"
)

// KillAtEnv names a point at which the supervisor SIGKILLs itself, for
// the fault tests (tests/e2e TestSnapshotPauseFaults): a kill at an exact
// instant of a save, a pause or a resume, which a test outside could hit
// only by chance. The points are killPoint's callers:
//
//	pause.saved       pause to disk: state written, not committed
//	pause.committed   pause to disk: state committed, the VMM still runs
//	resume.running    resume: the guest runs on and answers, not committed
//	snapshot.saved    snapshot save: state written, not committed
const KillAtEnv = "MVM_TEST_SUPERVISOR_KILL_AT"

// killPoint kills the supervisor, as SIGKILL from outside would, when
// KillAtEnv names point.
func killPoint(point string) {
	if os.Getenv(KillAtEnv) != point {
		return
	}
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	time.Sleep(time.Minute) // the signal is on its way
}
