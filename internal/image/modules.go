package image

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// normModule canonicalises a module name: '-' and '_' are equivalent in
// kernel module names, and a ".ko" suffix or directory is dropped.
func normModule(name string) string {
	name = filepath.Base(strings.TrimSpace(name))
	name = strings.TrimSuffix(name, ".ko")
	return strings.ReplaceAll(name, "-", "_")
}

// moduleIndex maps canonical module names to .ko files of one modules dir.
type moduleIndex struct {
	dir     string
	files   map[string]string // name -> absolute .ko path
	builtin map[string]bool   // names listed in modules.builtin
}

// indexModules walks modulesDir once, recording every .ko file and the
// built-in module list.
func indexModules(modulesDir string) (*moduleIndex, error) {
	dir, err := filepath.Abs(modulesDir)
	if err != nil {
		return nil, fmt.Errorf("modules dir %s: %w", modulesDir, err)
	}
	idx := &moduleIndex{dir: dir, files: map[string]string{}, builtin: map[string]bool{}}
	err = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".ko") {
			return nil
		}
		n := normModule(e.Name())
		if prev, dup := idx.files[n]; !dup || p < prev {
			idx.files[n] = p // deterministic if a name appears twice
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", dir, err)
	}
	f, err := os.Open(filepath.Join(dir, "modules.builtin"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// No built-in list: every module must come from a file.
	case err != nil:
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	default:
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if line := strings.TrimSpace(sc.Text()); line != "" {
				idx.builtin[normModule(line)] = true
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read modules.builtin: %w", err)
		}
	}
	return idx, nil
}

// moduleDepends reads the "depends=" entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo of %s: %w", path, err)
	}
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, d)
			}
		}
	}
	return deps, nil
}

// ModuleClosure returns the absolute paths of the .ko files needed to load
// the named modules, dependencies before the modules that need them.
//
// Names are module names such as "virtio_console"; '-' and '_' are treated as
// equal. Dependencies come from each module's "depends=" modinfo entry (the
// Debian package ships no modules.dep). Modules built into the kernel (listed
// in modules.builtin) are skipped. A name that is neither a module file nor
// built in is an error. Soft dependencies are not followed.
func ModuleClosure(modulesDir string, names []string) ([]string, error) {
	if len(names) == 0 {
		return nil, nil
	}
	idx, err := indexModules(modulesDir)
	if err != nil {
		return nil, err
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []string
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		n := normModule(name)
		switch state[n] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), n)
		}
		path, ok := idx.files[n]
		if !ok {
			if idx.builtin[n] {
				state[n] = done
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("module %q (needed by %s) not found in %s", name, chain[len(chain)-1], idx.dir)
			}
			return fmt.Errorf("module %q not found in %s", name, idx.dir)
		}
		state[n] = visiting
		deps, err := moduleDepends(path)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(chain, n)); err != nil {
				return err
			}
		}
		state[n] = done
		order = append(order, path)
		return nil
	}
	for _, name := range names {
		if normModule(name) == "" {
			return nil, fmt.Errorf("empty module name")
		}
		if err := visit(name, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
