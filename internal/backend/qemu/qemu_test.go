package qemu

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/backend"
)

func TestDetectAccel(t *testing.T) {
	defer func(f func() error) { kvmProbe = f }(kvmProbe)
	probed := 0
	kvmProbe = func() error { probed++; return nil }
	t.Setenv("MVM_ACCEL", "")
	if r := DetectAccel(); r.Accel != "kvm" || probed != 1 {
		t.Fatalf("usable KVM: %+v (probed %d)", r, probed)
	}
	kvmProbe = func() error {
		probed++
		return errors.New("/dev/kvm not usable (permission denied): guests run under TCG emulation")
	}
	if r := DetectAccel(); r.Accel != "tcg" || !strings.Contains(r.Reason, "permission denied") {
		t.Fatalf("unusable KVM: %+v", r)
	}
	// MVM_ACCEL decides without probing; a bad value falls back to tcg
	// and says why.
	probed = 0
	for v, want := range map[string]string{"kvm": "kvm", "tcg": "tcg", "xen": "tcg"} {
		t.Setenv("MVM_ACCEL", v)
		r := DetectAccel()
		if r.Accel != want || r.Reason == "" {
			t.Errorf("MVM_ACCEL=%s: %+v", v, r)
		}
		if v == "xen" && !strings.Contains(r.Reason, `"xen"`) {
			t.Errorf("MVM_ACCEL=xen: reason %q does not name the value", r.Reason)
		}
	}
	if probed != 0 {
		t.Fatalf("probed %d times although MVM_ACCEL was set", probed)
	}
}

// TestProbeKVMOnThisHost: whatever this host has, the probe answers
// without panicking and a failure says what happens next (TCG).
func TestProbeKVMOnThisHost(t *testing.T) {
	if err := probeKVM(); err != nil && !strings.Contains(err.Error(), "TCG") {
		t.Fatalf("probe error does not say TCG follows: %v", err)
	}
}

func TestKernelCmdline(t *testing.T) {
	kvm := KernelCmdline("kvm")
	if kvm != "console=ttyS0 reboot=t panic=-1 quiet 8250.nr_uarts=1" {
		t.Fatalf("kvm cmdline %q", kvm)
	}
	tcg := KernelCmdline("tcg")
	if !strings.HasPrefix(tcg, kvm) {
		t.Fatalf("tcg cmdline %q does not extend %q", tcg, kvm)
	}
	if khz := hostTSCkHz(); khz > 0 && !strings.Contains(tcg, "tsc_early_khz=") {
		t.Fatalf("host TSC known (%d kHz) but not passed under TCG: %q", khz, tcg)
	}
}

// argValue returns the value after flag's n-th occurrence.
func argValues(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestArgs(t *testing.T) {
	spec := backend.Spec{
		Name: "mvm-0123456789ab", Kernel: "/k/vmlinux", Initrd: "/k/initrd.cpio", Cmdline: "mvm.hostname=box",
		CPUs: 2, MemoryMiB: 256, Dir: "/very/long/state/dir",
		Disks: []backend.Disk{{Path: "/img/root.ext4", ReadOnly: true}, {Path: "rw.ext4"}},
	}
	args := Args(spec, "tcg")
	one := func(flag, want string) {
		t.Helper()
		if got := argValues(args, flag); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", flag, got, want)
		}
	}
	one("-name", "mvm-0123456789ab") // the VMM tag: ProcessAlive finds it by pid
	one("-accel", "tcg")
	one("-m", "256")
	one("-smp", "2")
	one("-kernel", "/k/vmlinux")
	one("-initrd", "/k/initrd.cpio")
	one("-append", KernelCmdline("tcg")+" mvm.hostname=box")
	one("-qmp", "unix:"+QMPSocket+",server=on,wait=off")
	one("-serial", "chardev:con")
	if !strings.HasPrefix(argValues(args, "-M")[0], "microvm,") {
		t.Errorf("machine %q", argValues(args, "-M"))
	}
	// sockets and console are relative to the VMM's working directory,
	// never under spec.Dir's (possibly long) path
	for _, a := range args {
		if strings.Contains(a, spec.Dir) {
			t.Errorf("argument %q names the sandbox directory", a)
		}
	}
	chardevs := argValues(args, "-chardev")
	if !slices.Contains(chardevs, "file,id=con,path="+ConsoleLog) ||
		!slices.Contains(chardevs, "socket,id=agent,path="+ChannelSocket+",server=on,wait=off") {
		t.Errorf("chardevs %q", chardevs)
	}
	if !slices.Contains(argValues(args, "-device"), "virtserialport,chardev=agent,name="+agentapi.PortName) {
		t.Errorf("no agent port: %q", argValues(args, "-device"))
	}
	drives := argValues(args, "-drive")
	if len(drives) != 2 || drives[0] != "file=/img/root.ext4,if=none,format=raw,id=disk0,cache=unsafe,readonly=on" ||
		drives[1] != "file=rw.ext4,if=none,format=raw,id=disk1,cache=unsafe" {
		t.Errorf("drives %q", drives)
	}
	if slices.Contains(args, "-cpu") {
		t.Error("-cpu host under TCG")
	}
	if slices.Contains(args, "-netdev") || slices.Contains(args, "-nic") {
		t.Error("a network device without a network in the spec")
	}
	for _, f := range []string{"-nodefaults", "-no-user-config", "-no-reboot"} {
		if !slices.Contains(args, f) {
			t.Errorf("missing %s", f)
		}
	}

	kvm := Args(backend.Spec{Name: "x", Kernel: "/k", CPUs: 1, MemoryMiB: 64}, "kvm")
	if got := argValues(kvm, "-cpu"); len(got) != 1 || got[0] != "host" {
		t.Errorf("kvm: -cpu %q", got)
	}
	if slices.Contains(kvm, "-initrd") || slices.Contains(kvm, "-drive") {
		t.Errorf("kvm without initrd/disks: %q", kvm)
	}
	withNet := Args(backend.Spec{Name: "x", Kernel: "/k", CPUs: 1, MemoryMiB: 64, Network: &backend.Network{Restrict: true}}, "tcg")
	if len(argValues(withNet, "-netdev")) != 1 {
		t.Errorf("network spec gave no -netdev: %q", withNet)
	}
}

func TestStartRefusesBadSpecAndMissingBinary(t *testing.T) {
	if _, err := Start(t.Context(), backend.Spec{CPUs: 0, MemoryMiB: 128, Dir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "at least 1 cpu") {
		t.Fatalf("0 cpus: %v", err)
	}
	if _, err := Start(t.Context(), backend.Spec{CPUs: 1, MemoryMiB: 32, Dir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "64 MiB") {
		t.Fatalf("32 MiB: %v", err)
	}
	t.Setenv("MVM_QEMU", "/nonexistent/qemu")
	if _, err := Start(t.Context(), backend.Spec{CPUs: 1, MemoryMiB: 128, Dir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "mvmctl setup") {
		t.Fatalf("missing qemu: %v", err)
	}
}

// TestArgsIncoming: a machine started from a saved state waits for it,
// stopped (-incoming defer -S); one that boots does not.
func TestArgsIncoming(t *testing.T) {
	spec := backend.Spec{Name: "t", Kernel: "k", CPUs: 1, MemoryMiB: 256, Dir: "/d"}
	if slices.Contains(Args(spec, "tcg"), "-incoming") {
		t.Fatal("a boot waits for a saved state")
	}
	spec.Incoming = "/snap/memory.state"
	args := Args(spec, "tcg")
	i := slices.Index(args, "-incoming")
	if i < 0 || args[i+1] != "defer" || !slices.Contains(args, "-S") {
		t.Fatalf("args %q", args)
	}
	if MachineOptions(spec) != argValues(args, "-M")[0] {
		t.Fatalf("machine %q", argValues(args, "-M"))
	}
}
