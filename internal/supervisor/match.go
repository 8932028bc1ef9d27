package supervisor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/backend/firecracker"
	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// MachineMatch is the snapshot.Match of the machine the backend named
// (qemu, the default, or firecracker) builds from spec (after the
// runtime's resource and network choices): the VMM binary's digest, and
// for Firecracker its version (its snapshots restore only into the same
// version), the machine, kernel, initramfs and image digests, sizes and
// devices.
func MachineMatch(backendName string, spec backend.Spec, accel, imageDigest, ociDigest, kernelDigest string) (snapshot.Match, error) {
	m := snapshot.Match{
		KernelDigest: kernelDigest, ImageDigest: imageDigest, OCIDigest: ociDigest,
		MemoryMiB: spec.MemoryMiB, CPUs: spec.CPUs, Accel: accel,
	}
	var bin string
	switch backendName {
	case "", "qemu":
		b, err := exec.LookPath(qemu.Binary())
		if err != nil {
			return snapshot.Match{}, fmt.Errorf("snapshot: %s not found", qemu.Binary())
		}
		bin, m.Backend, m.Machine = b, "qemu", qemu.MachineOptions(spec)
	case "firecracker":
		b, err := firecracker.LookBinary()
		if err != nil {
			return snapshot.Match{}, fmt.Errorf("snapshot: %w", err)
		}
		bin, m.Backend, m.Machine = b, "firecracker", "firecracker virtio-mmio: "+firecracker.KernelCmdline
	default:
		return snapshot.Match{}, fmt.Errorf("snapshot: backend %q: want qemu or firecracker", backendName)
	}
	vmm, err := binaryDigest(bin)
	if err != nil {
		return snapshot.Match{}, err
	}
	m.VMMBinary = vmm
	if m.Backend == "firecracker" {
		if m.VMMVersion, err = firecrackerVersion(bin, vmm); err != nil {
			return snapshot.Match{}, err
		}
	}
	if spec.Initrd != "" {
		if m.InitrdDigest, _, err = snapshot.FileDigest(spec.Initrd); err != nil {
			return snapshot.Match{}, fmt.Errorf("snapshot: initramfs: %w", err)
		}
	}
	type disk struct {
		ReadOnly bool   `json:"ro"`
		Serial   string `json:"serial,omitempty"`
	}
	dev := struct {
		Disks  []disk `json:"disks"`
		NIC    bool   `json:"nic"`
		Shares int    `json:"shares"`
	}{Disks: []disk{}, NIC: spec.Network != nil, Shares: len(spec.Shares)}
	for _, d := range spec.Disks {
		dev.Disks = append(dev.Disks, disk{d.ReadOnly, d.Serial})
	}
	b, _ := json.Marshal(dev)
	m.Devices = string(b)
	return m, nil
}

// firecrackerVersion is the first line of `firecracker --version`
// ("Firecracker v1.7.0"), remembered per binary digest.
func firecrackerVersion(bin, digest string) (string, error) {
	binMu.Lock()
	v, ok := versionCache[digest]
	binMu.Unlock()
	if ok {
		return v, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	line, _, _ := strings.Cut(string(out), "\n")
	line = strings.TrimSpace(line)
	if err != nil || line == "" {
		return "", fmt.Errorf("snapshot: %s --version: no version (%v); a snapshot records the firecracker version it restores into", bin, err)
	}
	binMu.Lock()
	versionCache[digest] = line
	binMu.Unlock()
	return line, nil
}

var (
	binMu    sync.Mutex
	binCache = map[string]string{}
	// versionCache is firecracker's version line by binary digest.
	versionCache = map[string]string{}
)

// binaryDigest is the sha256 of an executable, remembered per process by
// path, inode, size and modification time.
func binaryDigest(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	key := fmt.Sprintf("%s|%d|%d|%d", filepath.Clean(path), ino, fi.Size(), fi.ModTime().UnixNano())
	binMu.Lock()
	defer binMu.Unlock()
	if d, ok := binCache[key]; ok {
		return d, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	d := "sha256:" + hex.EncodeToString(h.Sum(nil))
	binCache[key] = d
	return d, nil
}
