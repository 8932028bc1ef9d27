package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/mcp"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/spf13/cobra"
)

func init() { register(newMCPCmd) }

// mcpImageResolver tells the MCP server whether an image name may be
// booted and the memory its manifest asks for: templates (built on first
// use), built images, and OCI references already pulled, or not yet
// pulled when the operator allows registries (EnvMCPAllowRegistries=1).
func mcpImageResolver(d paths.Dirs) func(string) (int, error) {
	return func(name string) (int, error) {
		if name == "" || name == "minimal" {
			return 0, nil // the built-in initramfs image
		}
		a, err := image.ResolveImage(d, name)
		var nb *image.NotBuiltError
		var np *image.NotPulledError
		switch {
		case err == nil:
			return int(a.MemoryMiB), nil
		case errors.As(err, &nb):
			return 0, nil // a template, built on first use
		case errors.As(err, &np) && os.Getenv(EnvMCPAllowRegistries) == "1":
			return 0, nil // pulled on first use: the operator allowed registries
		case errors.As(err, &np):
			return 0, fmt.Errorf("refused: image %s is not in the cache and this server does not reach registries; the operator pulls it first (mvmctl image pull) or starts the server with %s=1", np.Ref, EnvMCPAllowRegistries)
		}
		return 0, err
	}
}

// EnvMCPAllowRegistries=1 lets `mvmctl mcp` pull OCI images a client
// names; by default only images already in the cache are used.
const EnvMCPAllowRegistries = "MVM_MCP_ALLOW_REGISTRIES"

func newMCPCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mcp",
		Short: "Model Context Protocol server: route a model's tool calls into sandboxes",
		Long: `mcp serves the Model Context Protocol so that a model client (Claude Desktop,
VS Code, Cursor, ...) runs commands and code inside mvm microVMs instead of
the host. See docs/mcp.md for client configuration.`,
	}
	cmd.AddCommand(newMCPStdioCmd(app))
	return cmd
}

func newMCPStdioCmd(app *App) *cobra.Command {
	return &cobra.Command{
		Use:   "stdio",
		Short: "Serve MCP on standard input and output",
		Long: fmt.Sprintf(`stdio serves MCP as newline-delimited JSON-RPC on stdin and stdout; logs go
to stderr only. Tools: sandbox_create, sandbox_list, sandbox_destroy,
run_command, run_code, files_write, files_read, files_list.

Sandboxes made through MCP use the restrictive profile and have no network
unless a call gives an allowlist (then the standard profile, egress to those
names only; never host.mvm.internal).
When the client closes stdin, or the server gets SIGTERM or SIGINT, every
sandbox it created is destroyed.

Limits (environment; durations are Go durations like 90s or 5m, or seconds):
  %-24s destroy a sandbox idle this long        (default %s)
  %-24s longest lifetime of a sandbox           (default %s)
  %-24s tool calls at once; more are "busy"     (default %d)
  %-24s largest sandbox memory in MiB           (default %d)
  %-24s sandboxes alive at once                 (default %d)
  %-24s total memory of those sandboxes, MiB    (default %d)
An invalid value stops the server at start (exit 2).

Closing stdin answers every request already read, then stops; SIGTERM
cancels running calls at once.`,
			mcp.EnvSessionIdle, mcp.DefaultSessionIdle, mcp.EnvSessionMax, mcp.DefaultSessionMax,
			mcp.EnvMaxInflight, mcp.DefaultMaxInflight, mcp.EnvMemCeilingMiB, mcp.DefaultMemCeilingMiB,
			mcp.EnvMaxSandboxes, mcp.DefaultMaxSandboxes, mcp.EnvTotalMemMiB, mcp.DefaultTotalMemMiB),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runMCPStdio(cmd.Context(), app)
		},
	}
}

func runMCPStdio(parent context.Context, app *App) error {
	lim, err := mcp.LimitsFromEnv(os.Getenv)
	if err != nil {
		return exitCode(ExitUsage, fmt.Errorf("mcp stdio: %v", err))
	}
	rt, err := app.runtime()
	if err != nil {
		return exitCode(ExitMvm, err)
	}
	if parent == nil {
		parent = context.Background()
	}
	ctx, sig, stop := signalContext(parent)
	defer stop()

	level := slog.LevelInfo
	if strings.EqualFold(os.Getenv("MVM_MCP_LOG"), "debug") {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(app.Stderr, &slog.HandlerOptions{Level: level})).With("component", "mcp")
	srv := mcp.New(mcp.Options{
		Runtime:      rt,
		Limits:       lim,
		Logger:       log,
		Version:      Version,
		ResolveImage: mcpImageResolver(app.Dirs),
	})
	err = srv.Run(ctx, &sdk.IOTransport{Reader: readCloser(app.Stdin), Writer: writeCloser(app.Stdout)})
	if s := sig(); s != nil {
		log.Info("stopped by signal; every sandbox of this server was destroyed", "signal", s.String())
		return &ExitError{Code: signalExit(s), Silent: true}
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return exitCode(ExitMvm, fmt.Errorf("mcp stdio: %v", err))
	}
	return nil
}

func readCloser(r io.Reader) io.ReadCloser {
	if rc, ok := r.(io.ReadCloser); ok {
		return rc
	}
	return io.NopCloser(r)
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

func writeCloser(w io.Writer) io.WriteCloser {
	if wc, ok := w.(io.WriteCloser); ok {
		return wc
	}
	return nopWriteCloser{w}
}
