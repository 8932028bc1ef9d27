// Package hostsetup checks and installs what mvm needs on the host: Debian
// packages, the guest kernel, the agent, and writable directories.
package hostsetup

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"golang.org/x/sys/unix"
)

// Package is a Debian package mvm uses, and the command that proves it.
type Package struct {
	Name     string
	Command  string
	Required bool
	Purpose  string
}

// Packages lists the host packages mvm uses.
var Packages = []Package{
	{"qemu-system-x86", "qemu-system-x86_64", true, "runs the microVMs"},
	{"busybox-static", "busybox", true, "userland of the minimal image"},
	{"e2fsprogs", "mkfs.ext4", true, "packs root filesystems and writable layers"},
	{"mmdebstrap", "mmdebstrap", false, "builds the Debian-based templates (debian, python, node)"},
	{"erofs-utils", "mkfs.erofs", false, "packs read-only erofs images"},
}

// Check is one prerequisite.
type Check struct {
	Name     string `json:"name"`
	OK       bool   `json:"ok"`
	Required bool   `json:"required"`
	Info     string `json:"info"`
	Fix      string `json:"fix,omitempty"`
}

// MinFreeBytes is the free space doctor wants in the cache directory.
const MinFreeBytes = 2 << 30

// Run performs every check. agent is the guest agent's path.
func Run(d paths.Dirs, agent string) []Check {
	var out []Check
	for _, p := range Packages {
		c := Check{Name: p.Name, Required: p.Required}
		if path, err := exec.LookPath(p.Command); err == nil {
			c.OK, c.Info = true, path
			if p.Name == "qemu-system-x86" {
				if v, err := exec.Command(path, "--version").Output(); err == nil {
					c.Info = strings.SplitN(string(v), "\n", 2)[0]
				}
			}
		} else {
			c.Info = p.Purpose + ": " + p.Command + " not found"
			c.Fix = "mvmctl setup   (or: apt-get install -y " + p.Name + ")"
		}
		out = append(out, c)
	}
	// virtiofsd ships with qemu-system-common (a dependency of
	// qemu-system-x86); only host directories (-v DIR:PATH) need it.
	if p, err := qemu.Virtiofsd(); err == nil {
		out = append(out, Check{Name: "virtiofsd", OK: true, Info: p})
	} else {
		out = append(out, Check{Name: "virtiofsd", Info: "host directories (-v DIR:PATH): " + err.Error(), Fix: "apt-get install -y qemu-system-common"})
	}
	acc := qemu.DetectAccel()
	out = append(out, Check{Name: "accelerator", OK: true, Required: true, Info: acc.Accel + ": " + acc.Reason})
	k, err := image.FindKernel(d)
	if err != nil {
		out = append(out, Check{Name: "kernel", Required: true, Info: err.Error(), Fix: "mvmctl setup"})
	} else {
		out = append(out, Check{Name: "kernel", OK: true, Required: true, Info: k.Version + " " + k.Digest[:19]})
	}
	if st, err := os.Stat(agent); err != nil || st.Mode()&0o111 == 0 {
		out = append(out, Check{Name: "agent", Required: true, Info: agent + " missing or not executable",
			Fix: "build it beside mvmctl: make build (or go build -o DIR/ ./cmd/...), or set MVM_AGENT_BIN"})
	} else {
		out = append(out, Check{Name: "agent", OK: true, Required: true, Info: agent})
	}
	for _, dir := range []struct{ name, path string }{{"cache dir", d.Cache}, {"state dir", d.State}, {"data dir", d.Data}} {
		c := Check{Name: dir.name, Required: true, Info: dir.path}
		if err := writable(dir.path); err != nil {
			c.Info += ": " + err.Error()
			c.Fix = "make it writable, or point MVM_CACHE_DIR / MVM_STATE_DIR / MVM_DATA_DIR elsewhere"
		} else {
			c.OK = true
		}
		out = append(out, c)
	}
	var fs unix.Statfs_t
	c := Check{Name: "free disk", Required: true}
	if err := unix.Statfs(existingParent(d.Cache), &fs); err != nil {
		c.Info = err.Error()
	} else {
		free := fs.Bavail * uint64(fs.Bsize)
		c.Info = fmt.Sprintf("%.1f GiB free in %s", float64(free)/(1<<30), d.Cache)
		c.OK = free >= MinFreeBytes
		if !c.OK {
			c.Fix = "free at least 2 GiB, or set MVM_CACHE_DIR to a larger disk"
		}
	}
	return append(out, c)
}

func existingParent(p string) string {
	for p != "/" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
		p = parent(p)
	}
	return "/"
}

func parent(p string) string {
	i := strings.LastIndexByte(strings.TrimRight(p, "/"), '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}

func writable(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".doctor-*")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}

// Missing returns the Debian packages whose command is absent.
func Missing(includeOptional bool) []string {
	var names []string
	for _, p := range Packages {
		if _, err := exec.LookPath(p.Command); err != nil && (p.Required || includeOptional) {
			names = append(names, p.Name)
		}
	}
	return names
}

// Install installs missing packages (as root) and the guest kernel. Not
// root and packages missing: it returns an error with the exact command.
func Install(ctx context.Context, d paths.Dirs, log io.Writer) error {
	missing := Missing(true)
	if len(missing) > 0 {
		if os.Geteuid() != 0 {
			return fmt.Errorf("missing packages %s; run as root:\n  sudo apt-get update && sudo apt-get install -y %s\nthen run `mvmctl setup` again",
				strings.Join(missing, ", "), strings.Join(missing, " "))
		}
		fmt.Fprintf(log, "installing %s\n", strings.Join(missing, " "))
		if err := apt(ctx, log, "update", "-q"); err != nil {
			return err
		}
		args := append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...)
		if err := apt(ctx, log, args...); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(log, "host packages: all present")
	}
	k, err := image.FindKernel(d)
	if err == nil {
		fmt.Fprintf(log, "guest kernel: %s (already unpacked)\n", k.Version)
		return nil
	}
	fmt.Fprintln(log, "guest kernel: fetching Debian's linux-image-cloud-amd64")
	k, err = image.FetchKernel(ctx, d, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "guest kernel: %s ready\n", k.Version)
	return nil
}

func apt(ctx context.Context, log io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, "apt-get", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("apt-get %s: %w", strings.Join(args, " "), err)
	}
	return nil
}
