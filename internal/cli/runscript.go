package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/decl"
)

// runScript is `mvmctl run --mode live|record SCRIPT [ARGS...]`: it runs a
// runtime-SDK script on the host (it is the author's own program, run in
// the author's name) with MVM_SDK_MODE set and MVM_CLI_BIN pointing at this
// mvmctl. In record mode nothing boots: the SDK writes a recording, which
// is compiled to Workload IR and printed (stdout; the script's own output
// goes to stderr), exactly as `mvmctl compile RECORDING` would.
func runScript(ctx context.Context, app *App, mode string, args []string) error {
	if mode != "live" && mode != "record" {
		return exitCode(ExitUsage, fmt.Errorf("--mode %q: want live or record", mode))
	}
	script := args[0]
	var argv []string
	switch strings.ToLower(filepath.Ext(script)) {
	case ".py":
		py := os.Getenv("MVM_PYTHON")
		if py == "" {
			py = "python3"
		}
		argv = []string{py, script}
	case ".js", ".mjs", ".cjs":
		argv = []string{"node", script}
	case ".ts", ".mts", ".cts":
		return exitCode(ExitUsage, fmt.Errorf("%s: compile TypeScript with tsc and run the .js it emits", script))
	default:
		return exitCode(ExitUsage, fmt.Errorf("%s: want a .py or .js/.mjs/.cjs SDK script", script))
	}
	if st, err := os.Stat(script); err != nil || !st.Mode().IsRegular() {
		return exitCode(ExitUsage, fmt.Errorf("%s: not a readable file", script))
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MVM_SDK_MODE=") && !strings.HasPrefix(kv, "MVM_SDK_OUT_PATH=") && !strings.HasPrefix(kv, "MVM_CLI_BIN=") {
			env = append(env, kv)
		}
	}
	env = append(env, "MVM_SDK_MODE="+mode, "MVM_CLI_BIN="+self)
	cmd := exec.CommandContext(ctx, argv[0], append(argv[1:], args[1:]...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = app.Stdin, app.Stdout, app.Stderr
	var rec string
	if mode == "record" {
		dir, err := os.MkdirTemp("", "mvm-record-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		rec = filepath.Join(dir, "recording.json")
		env = append(env, "MVM_SDK_OUT_PATH="+rec)
		cmd.Stdout = app.Stderr // stdout carries the IR
	}
	cmd.Env = env
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return &ExitError{Code: ee.ExitCode(), Err: fmt.Errorf("%s exited with code %d", script, ee.ExitCode()), Silent: true}
		}
		return exitCode(ExitUsage, fmt.Errorf("run %s: %w", argv[0], err))
	}
	if mode == "live" {
		return nil
	}
	if _, err := os.Stat(rec); err != nil {
		return exitCode(exitDeclaration, fmt.Errorf("%s wrote no recording: it created no Sandbox", script))
	}
	res, err := decl.CompileFile(ctx, rec)
	if err != nil {
		return exitCode(exitDeclaration, err)
	}
	data, err := res.Workload.Marshal()
	if err != nil {
		return err
	}
	hash, _ := res.Workload.Hash()
	app.Stdout.Write(data)
	fmt.Fprintf(app.Stderr, "ir sha256 %s\n", hash)
	return nil
}
