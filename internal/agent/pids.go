package agent

import (
	"context"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"golang.org/x/sys/unix"
)

// signalAll sends sig to every process of the guest but the agent. Only
// PID 1 may: kill(-1) from anywhere else would reach the host's processes
// of the same user (the agent's unit tests run on the host).
func signalAll(sig int32) error {
	if sig <= 0 || sig >= 65 {
		return errdefs.Errorf(errdefs.KindInvalidArgument, "signal %d: must be between 1 and 64", sig)
	}
	if os.Getpid() != 1 {
		return errdefs.Errorf(errdefs.KindFailedPrecondition, "signalling every process needs the agent to be the guest's PID 1")
	}
	if err := unix.Kill(-1, unix.Signal(sig)); err != nil && err != unix.ESRCH {
		return errdefs.Errorf(errdefs.KindGuest, "signal all: %v", err)
	}
	return nil
}

// procStat is the part of /proc/PID/stat Pids reports.
type procStat struct {
	pid, ppid int
	comm      string
}

// parseStat reads "pid (comm) state ppid ..."; comm may hold spaces and
// parentheses, so it ends at the last ')'.
func parseStat(b string) (procStat, bool) {
	open, end := strings.IndexByte(b, '('), strings.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(b[:open]))
	if err != nil {
		return procStat{}, false
	}
	f := strings.Fields(b[end+1:])
	if len(f) < 2 {
		return procStat{}, false
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, false
	}
	comm := b[open+1 : end]
	if len(comm) > 64 {
		comm = comm[:64]
	}
	return procStat{pid: pid, ppid: ppid, comm: comm}, true
}

// Pids lists the guest's processes but the agent itself and kernel
// threads (pid 2 and its children).
func (s *server) Pids(context.Context, *pb.PidsRequest) (*pb.PidsResponse, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, errdefs.Errorf(errdefs.KindGuest, "read /proc: %v", err)
	}
	self := os.Getpid()
	out := &pb.PidsResponse{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		st, ok := parseStat(string(b))
		if !ok || st.pid == 2 || st.ppid == 2 {
			continue
		}
		if len(out.Pids) >= agentapi.MaxPids {
			out.Truncated = true
			break
		}
		g := &pb.GuestPid{Pid: int32(st.pid), Ppid: int32(st.ppid), Command: st.comm}
		if id, ok := s.names.Load(pid); ok {
			g.Id = id.(string)
		}
		out.Pids = append(out.Pids, g)
	}
	sort.Slice(out.Pids, func(i, j int) bool { return out.Pids[i].Pid < out.Pids[j].Pid })
	return out, nil
}

// cpuTimes is the guest's user and system CPU time since boot, in
// microseconds (from the first line of /proc/stat, in USER_HZ = 100).
func cpuTimes() (user, system uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0
	}
	n := func(i int) uint64 { v, _ := strconv.ParseUint(f[i], 10, 64); return v }
	const usecPerTick = 10000
	return (n(1) + n(2)) * usecPerTick, (n(3) + n(6) + n(7)) * usecPerTick
}
