package qemu

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// AccelReport says which accelerator QEMU will use and why.
type AccelReport struct {
	Accel  string `json:"accel"` // "kvm" or "tcg"
	Reason string `json:"reason"`
}

// DetectAccel picks KVM when it is really usable and TCG otherwise.
// MVM_ACCEL=kvm|tcg overrides the choice. A /dev/kvm that opens is not
// enough: some hosts expose one that cannot run a guest, so the CPU must
// also advertise hardware virtualisation and the device must create a VM.
func DetectAccel() AccelReport {
	switch v := os.Getenv("MVM_ACCEL"); v {
	case "kvm", "tcg":
		return AccelReport{Accel: v, Reason: "set by MVM_ACCEL"}
	case "":
	default:
		return AccelReport{Accel: "tcg", Reason: fmt.Sprintf("MVM_ACCEL=%q is not kvm or tcg; using tcg", v)}
	}
	if err := kvmProbe(); err != nil {
		return AccelReport{Accel: "tcg", Reason: err.Error()}
	}
	return AccelReport{Accel: "kvm", Reason: "/dev/kvm is usable"}
}

// kvmProbe is probeKVM; tests replace it to play hosts with and without
// a usable KVM.
var kvmProbe = probeKVM

func probeKVM() error {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("/dev/kvm not usable (%v): guests run under TCG emulation", err)
	}
	defer unix.Close(fd)
	const kvmGetAPIVersion, kvmCreateVM = 0xAE00, 0xAE01
	v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion)
	if err != nil || v != 12 {
		return fmt.Errorf("/dev/kvm answers API version %d (%v), want 12: using TCG", v, err)
	}
	vm, err := unix.IoctlRetInt(fd, kvmCreateVM)
	if err != nil {
		return fmt.Errorf("/dev/kvm cannot create a VM (%v): using TCG", err)
	}
	unix.Close(vm)
	flags, _ := os.ReadFile("/proc/cpuinfo")
	if !strings.Contains(string(flags), " vmx") && !strings.Contains(string(flags), " svm") {
		return fmt.Errorf("/dev/kvm exists but the CPU advertises no vmx/svm (a nested or emulated KVM that cannot run guests reliably): using TCG; set MVM_ACCEL=kvm to force it")
	}
	return nil
}

// hostTSCkHz returns the host TSC frequency in kHz, or 0 when unknown.
// Under TCG the guest's TSC ticks at the host's rate, and telling the
// guest kernel that rate (tsc_early_khz) avoids a calibration that can
// hang without a PIT or HPET.
func hostTSCkHz() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
	if err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
			return v
		}
	}
	b, err = os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil && mhz > 0 {
				return int(mhz * 1000)
			}
		}
	}
	return 0
}
