package shim

import (
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
)

// metrics puts a guest's stats into cgroup v2's shape, which `ctr task
// metrics` and the CRI print: the guest's process count as pids.current,
// its used memory (total less available) as memory.usage against its
// total as the limit, and its CPU time when the agent reports it.
func metrics(st *Stats) *v2.Metrics {
	used := uint64(0)
	if st.MemTotalBytes > st.MemAvailableBytes {
		used = st.MemTotalBytes - st.MemAvailableBytes
	}
	return &v2.Metrics{
		Pids:   &v2.PidsStat{Current: uint64(st.Processes)},
		CPU:    &v2.CPUStat{UsageUsec: st.CPUUsec, UserUsec: st.CPUUserUsec, SystemUsec: st.CPUSystemUsec},
		Memory: &v2.MemoryStat{Usage: used, UsageLimit: st.MemTotalBytes},
	}
}
