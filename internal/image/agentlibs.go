package image

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
)

// libDirs are where the host's dynamic libraries live on Debian.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/lib", "/usr/lib"}

// AgentRuntimeFiles returns what a dynamically linked agent needs to start
// as /init: its ELF interpreter and the libraries it names, read from the
// host, keyed by the guest path they must have. A static agent (the normal
// build, CGO_ENABLED=0) needs nothing and gets an empty map. This makes a
// plain `go build ./cmd/...` produce a working install even where cgo is on.
func AgentRuntimeFiles(agent string) (map[string][]byte, error) {
	f, err := elf.Open(agent)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", agent, err)
	}
	defer f.Close()
	out := map[string][]byte{}
	var interp string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return nil, fmt.Errorf("agent %s: read interpreter: %w", agent, err)
			}
			interp = string(b[:len(b)-1]) // NUL-terminated
		}
	}
	if interp == "" {
		return out, nil
	}
	add := func(guest, host string) error {
		b, err := os.ReadFile(host)
		if err != nil {
			return fmt.Errorf("agent needs %s: %w (build the agent with CGO_ENABLED=0 to avoid this)", guest, err)
		}
		out[guest] = b
		return nil
	}
	if err := add(interp, interp); err != nil {
		return nil, err
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", agent, err)
	}
	for _, lib := range libs {
		found := false
		for _, dir := range libDirs {
			p := filepath.Join(dir, lib)
			if _, err := os.Stat(p); err == nil {
				if err := add(p, p); err != nil {
					return nil, err
				}
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("agent needs %s, which is not on this host (build the agent with CGO_ENABLED=0)", lib)
		}
	}
	return out, nil
}
