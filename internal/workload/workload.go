// Package workload turns Workload IR into what the image builder and the
// runtime consume: a staged build context (the source with include and
// exclude applied, recorded files, the function runner) and an in-memory
// mvm.toml manifest. It never executes anything from the source.
package workload

import (
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/ir"
	"github.com/mvm-sandbox/mvm/internal/manifest"
)

//go:embed assets
var assets embed.FS

// Guest paths of the runner.
const (
	RunnerDir    = "/usr/lib/mvm"
	PythonRunner = RunnerDir + "/runner.py"
	NodeRunner   = RunnerDir + "/runner.mjs"
	// NodeStubDir makes `import ... from "mvm-sdk"` resolve in the guest
	// (Node looks in /node_modules from any directory).
	NodeStubDir = "/node_modules/mvm-sdk"
	// WorkerDir is where warm-worker requests and replies are exchanged.
	WorkerDir = "/tmp/.mvm-invoke"
)

// Caps on the staged source.
const (
	MaxSourceFiles = 100000
	MaxSourceBytes = 2 << 30
)

// Stage is a prepared build context; Remove it when the build is done.
type Stage struct {
	Dir      string
	Manifest *manifest.Manifest
	Files    int
	Bytes    int64
}

// Remove deletes the staging directory.
func (s *Stage) Remove() error { return os.RemoveAll(s.Dir) }

// WorkingDir is where the source lands (the first entrypoint's working
// directory).
func WorkingDir(w *ir.Workload) string {
	if len(w.Entrypoints) > 0 && w.Entrypoints[0].WorkingDir != "" {
		return w.Entrypoints[0].WorkingDir
	}
	return ir.DefaultWorkingDir
}

// Prepare realises the image (a template and packages, or an OCI image
// reference the build pulls), checks the secrets (secretExists reports
// whether the host's store has one; nil means none exists), stages the
// source from baseDir and returns the manifest to build. tmpDir holds the
// staging directory. Errors carry ir E_* codes where one applies. Secrets
// never enter the image: the runtime hands them to the guest at exec time.
func Prepare(w *ir.Workload, baseDir, tmpDir string, secretExists func(string) bool) (*Stage, error) {
	real, err := ir.Realize(w.Image)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, n := range w.SecretNames() {
		if secretExists == nil || !secretExists(n) {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return nil, &ir.Error{Code: ir.ESecretNotFound, Path: "env", Msg: fmt.Sprintf("secret(s) %s not in the secret store; store each with `mvmctl secret set NAME` (docs/secrets.md)", strings.Join(missing, ", "))}
	}
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(tmpDir, "workload-")
	if err != nil {
		return nil, err
	}
	st := &Stage{Dir: dir}
	fail := func(err error) (*Stage, error) {
		st.Remove()
		return nil, err
	}
	wd := WorkingDir(w)
	m := &manifest.Manifest{
		Dir: dir, Template: real.Template, Image: real.OCIRef, Name: w.Name, Packages: real.Packages,
		Env: map[string]string{}, CPUs: w.Resources.CPUCores, MemoryMiB: int64(w.Resources.MemoryMB),
		DiskMiB: int64(w.Resources.DiskMB), Workdir: wd, Profile: manifest.ProfileDev,
	}
	for k, v := range w.Env {
		if v.Kind == "secret" {
			continue // by name only; given at exec time, never baked in
		}
		m.Env[k] = v.Value
	}
	if ep, ok := w.CommandEntrypoint(); ok {
		m.Command = ep.Command
	}
	// The network is not written into the image: the runtime applies the
	// IR's network at boot (deny = no NIC).
	// the source
	n, b, err := copySource(w.Source, baseDir, filepath.Join(dir, "src"))
	if err != nil {
		return fail(err)
	}
	st.Files, st.Bytes = n, b
	m.Files = append(m.Files, manifest.FileMapping{Guest: wd, Source: "src"})
	// the runner
	if _, ok := w.FunctionEntrypoint(); ok {
		if err := copyAssets(dir); err != nil {
			return fail(err)
		}
		m.Files = append(m.Files,
			manifest.FileMapping{Guest: RunnerDir, Source: "runner"},
			manifest.FileMapping{Guest: NodeStubDir, Source: "mvm-sdk"})
	}
	// recorded files
	for i, f := range w.Files {
		data, err := base64.StdEncoding.DecodeString(f.ContentBase64)
		if err != nil {
			return fail(&ir.Error{Code: ir.EFile, Path: fmt.Sprintf("files[%d]", i), Msg: err.Error()})
		}
		rel := fmt.Sprintf("files/%d/%s", i, path.Base(f.Path))
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(rel)), 0o755); err != nil {
			return fail(err)
		}
		if err := os.WriteFile(filepath.Join(dir, rel), data, os.FileMode(f.Mode)&0o777); err != nil {
			return fail(err)
		}
		os.Chmod(filepath.Join(dir, rel), os.FileMode(f.Mode)&0o777)
		m.Files = append(m.Files, manifest.FileMapping{Guest: f.Path, Source: rel})
	}
	st.Manifest = m
	return st, nil
}

func copyAssets(dir string) error {
	for _, p := range []struct{ from, to string }{
		{"assets/runner.py", "runner/runner.py"}, {"assets/runner.mjs", "runner/runner.mjs"},
		{"assets/mvm-sdk/package.json", "mvm-sdk/package.json"}, {"assets/mvm-sdk/index.js", "mvm-sdk/index.js"},
		{"assets/mvm-sdk/index.cjs", "mvm-sdk/index.cjs"},
	} {
		b, err := assets.ReadFile(p.from)
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, p.to)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// copySource copies the source tree rooted at baseDir/src.Path to dst,
// applying include/exclude. The root must stay inside baseDir (after
// resolving symlinks); a symlink inside the tree that points outside it
// is refused (E_SOURCE_SYMLINK); sockets, FIFOs and devices are skipped.
func copySource(src ir.Source, baseDir, dst string) (files int, size int64, err error) {
	realBase, err := filepath.EvalSymlinks(baseDir)
	if err != nil {
		return 0, 0, &ir.Error{Code: ir.ESourceOutOfTree, Path: "source.path", Msg: fmt.Sprintf("declaration directory %s: %v", baseDir, err)}
	}
	root := filepath.Join(baseDir, filepath.FromSlash(src.Path))
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		return 0, 0, &ir.Error{Code: ir.ESourceOutOfTree, Path: "source.path", Msg: fmt.Sprintf("%s: %v", root, unwrap(err))}
	}
	if !within(realBase, realRoot) {
		return 0, 0, &ir.Error{Code: ir.ESourceOutOfTree, Path: "source.path", Msg: fmt.Sprintf("%s resolves to %s, outside %s", src.Path, realRoot, realBase)}
	}
	if st, err := os.Stat(realRoot); err != nil || !st.IsDir() {
		return 0, 0, &ir.Error{Code: ir.ESource, Path: "source.path", Msg: fmt.Sprintf("%s is not a directory", root)}
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return 0, 0, err
	}
	err = filepath.WalkDir(realRoot, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(realRoot, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if rel == ".git" || Match(src.Exclude, rel) {
			if de.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		out := filepath.Join(dst, filepath.FromSlash(rel))
		info, err := de.Info()
		if err != nil {
			return err
		}
		switch mode := info.Mode(); {
		case mode.IsDir():
			return os.MkdirAll(out, 0o755)
		case mode&os.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			target := t
			if !filepath.IsAbs(t) {
				target = filepath.Join(filepath.Dir(p), t)
			}
			if filepath.IsAbs(t) || !within(realRoot, filepath.Clean(target)) {
				return &ir.Error{Code: ir.ESourceSymlink, Path: "source", Msg: fmt.Sprintf("symlink %s -> %s points outside the source tree; replace it with the file, or exclude it", rel, t)}
			}
			if !Match(src.Include, rel) {
				return nil
			}
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return err
			}
			files++
			return os.Symlink(t, out)
		case mode.IsRegular():
			if !Match(src.Include, rel) {
				return nil
			}
			files++
			size += info.Size()
			if files > MaxSourceFiles || size > MaxSourceBytes {
				return &ir.Error{Code: ir.ESource, Path: "source", Msg: fmt.Sprintf("the source holds more than %d files or %d bytes; narrow it with include/exclude", MaxSourceFiles, int64(MaxSourceBytes))}
			}
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return err
			}
			return copyFile(p, out, mode.Perm())
		}
		return nil // sockets, FIFOs, devices
	})
	return files, size, err
}

func unwrap(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func within(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm&0o777)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Match reports whether rel (slash-separated) matches one of the glob
// patterns; "**" matches any number of path segments, other segments use
// path.Match. A pattern that matches a directory matches what is under it.
func Match(patterns []string, rel string) bool {
	segs := strings.Split(rel, "/")
	for _, p := range patterns {
		ps := strings.Split(strings.TrimSuffix(p, "/"), "/")
		for i := len(segs); i >= 1; i-- {
			if matchSegs(ps, segs[:i]) {
				return true
			}
		}
	}
	return false
}

func matchSegs(ps, ss []string) bool {
	if len(ps) == 0 {
		return len(ss) == 0
	}
	if ps[0] == "**" {
		for i := 0; i <= len(ss); i++ {
			if matchSegs(ps[1:], ss[i:]) {
				return true
			}
		}
		return false
	}
	if len(ss) == 0 {
		return false
	}
	if ok, _ := path.Match(ps[0], ss[0]); !ok {
		return false
	}
	return matchSegs(ps[1:], ss[1:])
}
