package decl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/ir"
)

// Result is a compiled declaration.
type Result struct {
	Workload *ir.Workload
	// File is the declaration (or recording) it came from.
	File string
	// BaseDir is the directory Workload.Source.Path is relative to.
	BaseDir string
	// Kind is "python", "typescript" or "recording".
	Kind string
}

var pyExts = map[string]bool{".py": true}
var tsExts = map[string]bool{".ts": true, ".mts": true, ".cts": true, ".js": true, ".mjs": true, ".cjs": true}

// Compile extracts the declaration of FILE or of the one declaring file
// at the top of DIR, lowers it to IR and validates it. Nothing is
// imported or executed.
func Compile(ctx context.Context, path string) (*Result, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, &Error{File: path, Code: EInput, Msg: fmt.Sprintf("cannot read: %v", unwrapPath(err))}
	}
	if st.IsDir() {
		return compileDir(ctx, path)
	}
	return CompileFile(ctx, path)
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func readCapped(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{File: path, Code: EInput, Msg: fmt.Sprintf("cannot read: %v", unwrapPath(err))}
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && !st.Mode().IsRegular() {
		return nil, &Error{File: path, Code: EInput, Msg: "not a regular file"}
	}
	b, err := io.ReadAll(io.LimitReader(f, ir.MaxBytes+1))
	if err != nil {
		return nil, &Error{File: path, Code: EInput, Msg: err.Error()}
	}
	return b, nil
}

// CompileFile compiles one file: Python, TypeScript/JavaScript, or a
// record-mode recording (.json).
func CompileFile(ctx context.Context, path string) (*Result, error) {
	src, err := readCapped(path)
	if err != nil {
		return nil, err
	}
	return CompileSource(ctx, path, src)
}

// CompileSource compiles src as if read from path (the extension picks
// the language).
func CompileSource(ctx context.Context, path string, src []byte) (*Result, error) {
	ext := strings.ToLower(filepath.Ext(path))
	res := &Result{File: path, BaseDir: filepath.Dir(path)}
	var f *found
	var err error
	switch {
	case pyExts[ext]:
		res.Kind = "python"
		f, err = extractPython(ctx, path, src)
	case tsExts[ext]:
		res.Kind = "typescript"
		f, err = extractTypeScript(ctx, path, src)
	case ext == ".json":
		res.Kind = "recording"
		res.Workload, err = compileRecording(path, src)
		if err != nil {
			return nil, err
		}
		return res, validate(path, res.Workload)
	default:
		return nil, &Error{File: path, Code: EInput, Msg: fmt.Sprintf("unknown file type %q", ext), Allowed: ".py, .ts/.mts/.cts/.js/.mjs/.cjs, or a record-mode recording .json"}
	}
	if err != nil {
		return nil, err
	}
	l := &lowerer{x: &extractor{file: path, src: src}}
	if res.Workload, err = l.lower(f); err != nil {
		return nil, err
	}
	return res, validate(path, res.Workload)
}

func validate(path string, w *ir.Workload) error {
	w.Normalize()
	if err := w.Validate(); err != nil {
		return fmt.Errorf("%s: the declaration is not a valid workload:\n%w", path, err)
	}
	return nil
}

func compileDir(ctx context.Context, dir string) (*Result, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, &Error{File: dir, Code: EInput, Msg: err.Error()}
	}
	var names []string
	for _, e := range ents {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if e.Type().IsRegular() && (pyExts[ext] || tsExts[ext]) && !strings.HasSuffix(e.Name(), ".d.ts") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var results []*Result
	for _, n := range names {
		p := filepath.Join(dir, n)
		src, err := readCapped(p)
		if err != nil {
			return nil, err
		}
		if !bytes.Contains(src, []byte("app")) || !bytes.Contains(src, []byte("mvm")) {
			continue
		}
		r, err := CompileSource(ctx, p, src)
		var de *Error
		if errors.As(err, &de) && de.Code == ENoApp {
			continue
		}
		if err != nil {
			return nil, err
		}
		results = append(results, r)
	}
	switch len(results) {
	case 0:
		return nil, &Error{File: dir, Code: ENoApp, Msg: "no file at the top of this directory declares an app", Allowed: "one .py/.ts file with @mvm.app(...) / mvm.app({...})(fn)"}
	case 1:
		return results[0], nil
	}
	return nil, &Error{File: dir, Code: EMultipleApps, Msg: fmt.Sprintf("%s and %s both declare an app", results[0].File, results[1].File), Allowed: "one app per directory (every app is one microVM); compile a FILE instead"}
}
