package agent

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// Version is the agent build version, set with -ldflags.
var Version = "0.1.0-dev"

type server struct {
	pb.UnimplementedAgentServer

	image    ImageConfig
	hostname string
	// console is whether the host admitted console access (mvm.console=1
	// on the kernel command line). Without it, sessions on a terminal are
	// refused.
	console bool
	reaper  *reaper

	// Boot milestones, guest milliseconds since the kernel started.
	agentStarted, modulesLoaded, rootMounted, channelBound int64
	firstRequest                                           atomic.Int64
	procs                                                  atomic.Int64

	// bg holds background processes (proc.go); its zero value is ready.
	bg procTable
	// restore is the state of the Restored RPC (restore.go).
	restore restoreState

	// rootDir is the root of a bundle sandbox's processes ("" when the
	// sandbox has none; bundle.go).
	rootDir string
	// rootReadOnly is the bundle's root.readonly (applied in the
	// container's mount namespace); ctr is the container's running init.
	rootReadOnly bool
	ctr          containerInit
	// names maps the pid of an Exec process to its ExecStart.id.
	names sync.Map
}

func (s *server) markRequest() {
	s.firstRequest.CompareAndSwap(0, uptimeMS())
}

func (s *server) trackProcess(_ int, delta int64) { s.procs.Add(delta) }

func (s *server) Hello(_ context.Context, req *pb.HelloRequest) (*pb.HelloResponse, error) {
	s.markRequest()
	if req.ProtocolVersion < agentapi.MinProtocolVersion {
		return nil, errdefs.Errorf(errdefs.KindFailedPrecondition,
			"host protocol %d is older than this agent's minimum %d: upgrade mvmctl", req.ProtocolVersion, agentapi.MinProtocolVersion)
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	return &pb.HelloResponse{
		ProtocolVersion:    agentapi.ProtocolVersion,
		MinProtocolVersion: agentapi.MinProtocolVersion,
		AgentVersion:       Version,
		Capabilities:       agentapi.Capabilities,
		Profile:            s.image.Profile,
		Hostname:           s.currentHostname(),
		KernelRelease:      unix.ByteSliceToString(uts.Release[:]),
	}, nil
}

func (s *server) Readiness(context.Context, *pb.ReadinessRequest) (*pb.ReadinessReport, error) {
	s.markRequest()
	return &pb.ReadinessReport{
		Profile: s.image.Profile,
		Boot: &pb.BootTimings{
			AgentStartedMs: s.agentStarted, ModulesLoadedMs: s.modulesLoaded,
			RootMountedMs: s.rootMounted, ChannelBoundMs: s.channelBound,
			FirstRequestMs: s.firstRequest.Load(),
		},
		Components: []*pb.Component{
			{Name: "control_plane", State: "ready"},
			{Name: "exec", State: map[bool]string{true: "disabled", false: "ready"}[s.image.Profile == "sealed"]},
		},
	}, nil
}

func (s *server) Stats(context.Context, *pb.StatsRequest) (*pb.StatsResponse, error) {
	out := &pb.StatsResponse{}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			switch f[0] {
			case "MemTotal:":
				out.MemTotalBytes = kb * 1024
			case "MemAvailable:":
				out.MemAvailableBytes = kb * 1024
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			out.Load1, _ = strconv.ParseFloat(f[0], 64)
			out.Load5, _ = strconv.ParseFloat(f[1], 64)
			out.Load15, _ = strconv.ParseFloat(f[2], 64)
		}
	}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				out.Processes++
			}
		}
	}
	out.UptimeSeconds = float64(uptimeMS()) / 1000
	out.CpuUserUsec, out.CpuSystemUsec = cpuTimes()
	var fs unix.Statfs_t
	if unix.Statfs("/", &fs) == nil {
		out.DiskTotalBytes = fs.Blocks * uint64(fs.Bsize)
		out.DiskFreeBytes = fs.Bavail * uint64(fs.Bsize)
	}
	return out, nil
}

func (s *server) Shutdown(context.Context, *pb.ShutdownRequest) (*pb.ShutdownResponse, error) {
	go func() {
		// Let the reply reach the host before the guest goes away.
		time.Sleep(50 * time.Millisecond)
		powerOff()
	}()
	return &pb.ShutdownResponse{}, nil
}

// powerOff ends the guest. With "reboot=t" and QEMU's -no-reboot, a
// restart request makes the VMM exit, which works on every machine type.
func powerOff() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	os.Exit(0)
}

// findPort returns the device node of the virtio-serial port named name.
func findPort(name string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		matches, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, m := range matches {
			b, err := os.ReadFile(m)
			if err == nil && strings.TrimSpace(string(b)) == name {
				dev := "/dev/" + filepath.Base(filepath.Dir(m))
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("virtio-serial port %q did not appear within %s", name, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Main is the agent's entry point. It never returns as PID 1: on a fatal
// error it logs to the console and powers the guest off, so the host sees
// the VMM exit instead of a hang.
func Main() {
	// The exec helper is never the guest's PID 1, but a container's init
	// is PID 1 of its own namespace: /proc (the agent's) tells it apart.
	if len(os.Args) > 1 && os.Args[1] == bundleExecArg && (os.Getpid() != 1 || !guestInit()) {
		bundleExecMain()
		return
	}
	log.SetFlags(0)
	log.SetPrefix("mvm-agent: ")
	s := &server{}
	if err := s.run(); err != nil {
		log.Printf("fatal: %v", err)
		if os.Getpid() == 1 {
			powerOff()
		}
		os.Exit(1)
	}
}

// guestInit reports whether this process is the guest's PID 1 (and not
// PID 1 of a PID namespace under it): the agent's /proc, when mounted,
// names it 1 (before /proc is mounted, only the guest's init runs).
func guestInit() bool {
	self, err := os.Readlink("/proc/self")
	return err != nil || self == "1"
}

func (s *server) run() error {
	pid1 := os.Getpid() == 1
	if pid1 {
		if err := mountEarly(); err != nil {
			return err
		}
	}
	s.agentStarted = uptimeMS()
	os.Setenv("PATH", defaultPath)
	if pid1 {
		s.reaper = newReaper()
		if err := loadModules(); err != nil {
			return err
		}
		s.modulesLoaded = uptimeMS()
		b, _ := os.ReadFile("/proc/cmdline")
		p := parseCmdline(string(b))
		if p.root != "" {
			if err := switchRoot(p); err != nil {
				return err
			}
			s.rootMounted = uptimeMS()
		}
		if err := setupMounts(string(b)); err != nil {
			return err
		}
		if tag := rootDirTag(string(b)); tag != "" {
			if err := setupBundleRoot(tag); err != nil {
				return err
			}
			s.rootDir = bundleRoot
		}
		s.hostname = p.hostname
		if h := rootDirHostname(string(b)); h != "" {
			s.hostname = h // the bundle's own (OCI hostname)
		}
		s.console = p.console
		if err := unix.Sethostname([]byte(s.hostname)); err != nil {
			log.Printf("sethostname: %v", err)
		}
		s.restore.netMode = netMode()
		if err := setupNetwork(); err != nil {
			log.Printf("network: %v", err) // fails closed: no egress
		}
		if s.rootDir != "" {
			if err := shareResolvConf(s.rootDir); err != nil {
				log.Printf("%v", err) // the container then has no resolver: fails closed
			}
			s.rootReadOnly = rootDirReadOnly(string(b))
		}
	} else {
		s.reaper = newReaper()
		s.hostname, _ = os.Hostname()
		s.console = true // not in a VM: no host plan speaks for it
	}
	s.image = readImageConfig()

	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(agentapi.MaxMessageBytes),
		grpc.MaxSendMsgSize(agentapi.MaxMessageBytes),
	)
	pb.RegisterAgentServer(gs, s)
	var boundOnce sync.Once
	bound := func() { boundOnce.Do(func() { s.channelBound = uptimeMS() }) }
	// With a vsock device (Firecracker) every vsock connection is a
	// channel, and the serial port is optional (vsock.go).
	if l, err := listenVsock(agentapi.VsockPort); err == nil {
		return s.serveVsock(l, gs, bound)
	}

	dev, err := findPort(agentapi.PortName, 15*time.Second)
	if err != nil {
		return err
	}
	// One session per host connection. A session ends when the host goes
	// away; normally the VM goes with it, but a VM restored from a saved
	// state (snapshot, pause to disk) runs on under a new host, which
	// finds the agent back in the handshake.
	for {
		port, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", dev, err)
		}
		if err := agentapi.GuestHandshake(context.Background(), port); err != nil {
			return err
		}
		sess, err := agentapi.GuestSession(port, os.Stderr)
		if err != nil {
			return err
		}
		bound()
		err = gs.Serve(sess)
		sess.Close()
		port.Close()
		log.Printf("agent channel closed (%v); waiting for the host again", err)
	}
}
