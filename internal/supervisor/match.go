package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// MachineMatch is the snapshot.Match of a QEMU machine built from spec (after the
// supervisor's changes: resources from the plan, the NIC if any) under
// accel, booting the image with imageDigest/ociDigest and the kernel with
// kernelDigest.
func MachineMatch(spec backend.Spec, accel, imageDigest, ociDigest, kernelDigest string) (snapshot.Match, error) {
	bin, err := exec.LookPath(qemu.Binary())
	if err != nil {
		return snapshot.Match{}, fmt.Errorf("snapshot: %s not found", qemu.Binary())
	}
	vmm, err := binaryDigest(bin)
	if err != nil {
		return snapshot.Match{}, err
	}
	initrd := ""
	if spec.Initrd != "" {
		if initrd, _, err = snapshot.FileDigest(spec.Initrd); err != nil {
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
	return snapshot.Match{
		Backend: "qemu", VMMBinary: vmm, Machine: qemu.MachineOptions(spec), Accel: accel,
		KernelDigest: kernelDigest, InitrdDigest: initrd, ImageDigest: imageDigest, OCIDigest: ociDigest,
		MemoryMiB: spec.MemoryMiB, CPUs: spec.CPUs, Devices: string(b),
	}, nil
}

var (
	binMu    sync.Mutex
	binCache = map[string]string{}
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
