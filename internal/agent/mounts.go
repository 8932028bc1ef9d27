package agent

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// guestMount is one entry of mvm.mounts= on the kernel command line: a
// host directory shared over virtiofs (Kind "virtiofs", Source the tag) or
// a volume on a virtio-blk disk (Kind "ext4", Source the disk's serial).
type guestMount struct {
	Kind     string `json:"k"`
	Source   string `json:"s"`
	Target   string `json:"t"`
	ReadOnly bool   `json:"ro,omitempty"`
}

// parseMounts decodes mvm.mounts=<base64url JSON>.
func parseMounts(cmdline string) ([]guestMount, error) {
	for _, f := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(f, "mvm.mounts=")
		if !ok {
			continue
		}
		b, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("mvm.mounts: %w", err)
		}
		var ms []guestMount
		if err := json.Unmarshal(b, &ms); err != nil {
			return nil, fmt.Errorf("mvm.mounts: %w", err)
		}
		for _, m := range ms {
			if m.Target == "" || !path.IsAbs(m.Target) || path.Clean(m.Target) != m.Target || m.Target == "/" {
				return nil, fmt.Errorf("mvm.mounts: bad target %q", m.Target)
			}
			if m.Kind != "virtiofs" && m.Kind != "ext4" {
				return nil, fmt.Errorf("mvm.mounts: unknown kind %q", m.Kind)
			}
		}
		return ms, nil
	}
	return nil, nil
}

// setupMounts mounts the host directories and volumes the sandbox was
// given. A mount that fails fails the boot: a sandbox never runs without
// a directory it was promised.
func setupMounts(cmdline string) error {
	ms, err := parseMounts(cmdline)
	if err != nil || len(ms) == 0 {
		return err
	}
	for _, m := range ms {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return fmt.Errorf("mount %s: %w", m.Target, err)
		}
		flags := uintptr(unix.MS_NODEV | unix.MS_NOSUID)
		data := ""
		if m.ReadOnly {
			flags |= unix.MS_RDONLY
		}
		source, fstype := m.Source, "virtiofs"
		if m.Kind == "ext4" {
			fstype = "ext4"
			if source, err = diskBySerial(m.Source, 10*time.Second); err != nil {
				return fmt.Errorf("volume for %s: %w", m.Target, err)
			}
			if m.ReadOnly {
				data = "noload" // a read-only disk cannot replay a journal
			}
		}
		if err := unix.Mount(source, m.Target, fstype, flags, data); err != nil {
			return fmt.Errorf("mount %s (%s) on %s: %w", m.Source, fstype, m.Target, err)
		}
	}
	return nil
}

// diskBySerial finds the virtio-blk disk whose serial is serial.
func diskBySerial(serial string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		ents, _ := os.ReadDir("/sys/block")
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "serial"))
			if err == nil && strings.TrimSpace(string(b)) == serial {
				dev := "/dev/" + e.Name()
				if err := waitForFile(dev, time.Until(deadline)); err != nil {
					return "", err
				}
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			return "", errors.New("no disk with serial " + serial + " appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
