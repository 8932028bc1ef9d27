// Package paths resolves where mvm keeps its data, cache and runtime state.
//
// Each directory follows the XDG base-directory convention and can be
// overridden with an MVM_* variable, so that tests run in temporary
// directories and in parallel.
package paths

import (
	"os"
	"path/filepath"
)

// Dirs is the set of directories one mvm invocation works in.
type Dirs struct {
	Data  string // keys, audit chain, built images: MVM_DATA_DIR or $XDG_DATA_HOME/mvm
	Cache string // kernels, templates, initramfs: MVM_CACHE_DIR or $XDG_CACHE_HOME/mvm
	State string // running sandboxes: MVM_STATE_DIR or $XDG_STATE_HOME/mvm
}

// FromEnv resolves the directories from the environment.
func FromEnv() Dirs {
	home, _ := os.UserHomeDir()
	if home == "" {
		home = "/tmp"
	}
	return Dirs{
		Data:  pick("MVM_DATA_DIR", "XDG_DATA_HOME", filepath.Join(home, ".local", "share")),
		Cache: pick("MVM_CACHE_DIR", "XDG_CACHE_HOME", filepath.Join(home, ".cache")),
		State: pick("MVM_STATE_DIR", "XDG_STATE_HOME", filepath.Join(home, ".local", "state")),
	}
}

func pick(override, xdg, fallback string) string {
	if v := os.Getenv(override); v != "" {
		return abs(v)
	}
	if v := os.Getenv(xdg); v != "" {
		return filepath.Join(abs(v), "mvm")
	}
	return filepath.Join(fallback, "mvm")
}

func abs(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// Sandboxes is the directory holding one subdirectory per sandbox.
func (d Dirs) Sandboxes() string { return filepath.Join(d.State, "sb") }

// Kernels is the directory holding unpacked guest kernels.
func (d Dirs) Kernels() string { return filepath.Join(d.Cache, "kernel") }

// Images is the directory holding content-addressed guest images.
func (d Dirs) Images() string { return filepath.Join(d.Cache, "images") }

// Keys is the directory holding the host signing key.
func (d Dirs) Keys() string { return filepath.Join(d.Data, "keys") }

// Audit is the directory holding the audit chain.
func (d Dirs) Audit() string { return filepath.Join(d.Data, "audit") }
