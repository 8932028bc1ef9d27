package agent

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/safetar"
	"google.golang.org/grpc"
)

var (
	reaperOnce sync.Once
	testReaper *reaper
)

// testClient serves a fresh agent over a unix socket and dials it the way
// the host does.
func testClient(t *testing.T, profile string) (*agentapi.Client, *server) {
	t.Helper()
	reaperOnce.Do(func() { testReaper = newReaper() })
	s := &server{reaper: testReaper, image: ImageConfig{Profile: profile}, hostname: "test", console: true}
	sock := filepath.Join(t.TempDir(), "a.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(agentapi.MaxMessageBytes), grpc.MaxSendMsgSize(agentapi.MaxMessageBytes))
	pb.RegisterAgentServer(gs, s)
	go gs.Serve(l)
	c, err := agentapi.Dial(context.Background(), func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); gs.Stop() })
	return c, s
}

func TestFileRPCs(t *testing.T) {
	c, _ := testClient(t, "dev")
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "f.sh")
	data := bytes.Repeat([]byte("0123456789"), 20000)
	resp, err := c.WriteFile(ctx, &pb.WriteFileHeader{Path: p, Mode: 0o755, HasMode: true}, bytes.NewReader(data))
	if err != nil || resp.Bytes != int64(len(data)) || resp.Info.Mode != 0o755 {
		t.Fatalf("write: %v %+v", err, resp)
	}
	var out bytes.Buffer
	if _, n, err := c.ReadFile(ctx, p, &out); err != nil || n != int64(len(data)) || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("read: %v %d", err, n)
	}
	// Typed errors cross the wire with their kind.
	checks := []struct {
		err  error
		kind agentapi.FsKind
	}{}
	_, _, err = c.ReadFile(ctx, filepath.Join(dir, "missing"), &out)
	checks = append(checks, struct {
		err  error
		kind agentapi.FsKind
	}{err, agentapi.FsNotFound})
	_, err = c.WriteFile(ctx, &pb.WriteFileHeader{Path: p, NoReplace: true}, strings.NewReader("x"))
	checks = append(checks, struct {
		err  error
		kind agentapi.FsKind
	}{err, agentapi.FsExists})
	_, _, err = c.ReadFile(ctx, dir, &out)
	checks = append(checks, struct {
		err  error
		kind agentapi.FsKind
	}{err, agentapi.FsIsDir})
	_, err = c.Agent.ListDir(ctx, &pb.ListDirRequest{Path: p})
	checks = append(checks, struct {
		err  error
		kind agentapi.FsKind
	}{err, agentapi.FsNotDir})
	_, err = c.Agent.Stat(ctx, &pb.StatRequest{Path: "relative"})
	checks = append(checks, struct {
		err  error
		kind agentapi.FsKind
	}{err, agentapi.FsInvalidPath})
	_, err = c.Agent.MakeDir(ctx, &pb.MakeDirRequest{Path: filepath.Join(dir, "a", "b")})
	checks = append(checks, struct {
		err  error
		kind agentapi.FsKind
	}{err, agentapi.FsNotFound})
	for i, ch := range checks {
		if k := agentapi.KindOf(ch.err); k != ch.kind {
			t.Errorf("check %d: kind %v, want %v (%v)", i, k, ch.kind, ch.err)
		}
	}
	fi, err := c.Agent.MakeDir(ctx, &pb.MakeDirRequest{Path: filepath.Join(dir, "a", "b"), Parents: true, Mode: 0o700})
	if err != nil || fi.Mode != 0o700 || fi.Type != "dir" {
		t.Fatalf("mkdir -p: %v %+v", err, fi)
	}
	if _, err := c.Agent.Remove(ctx, &pb.RemoveRequest{Path: filepath.Join(dir, "a")}); agentapi.KindOf(err) != agentapi.FsNotEmpty {
		t.Errorf("rm non-empty: %v", err)
	}
	if _, err := c.Agent.Remove(ctx, &pb.RemoveRequest{Path: filepath.Join(dir, "a"), Recursive: true}); err != nil {
		t.Errorf("rm -r: %v", err)
	}
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	if fi, err := c.Agent.Rename(ctx, &pb.RenameRequest{From: p, To: filepath.Join(dir, "d")}); err != nil || fi.Path != filepath.Join(dir, "d", "f.sh") {
		t.Errorf("mv into dir: %v %+v", err, fi)
	}
	ls, err := c.Agent.ListDir(ctx, &pb.ListDirRequest{Path: filepath.Join(dir, "d")})
	if err != nil || len(ls.Entries) != 1 || ls.Entries[0].Name != "f.sh" {
		t.Errorf("ls: %v %+v", err, ls)
	}

	// Archive round trip through the agent: in, then out.
	src := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(src, "s"), 0o750)
	os.WriteFile(filepath.Join(src, "s", "x"), []byte("x"), 0o640)
	os.Symlink("s/x", filepath.Join(src, "l"))
	guest := t.TempDir()
	in, _, err := c.CopyIn(ctx, src, guest)
	if err != nil || in.Files != 1 || in.Symlinks != 1 || in.Root != filepath.Join(guest, "tree") {
		t.Fatalf("copy in: %v %+v", err, in)
	}
	host := filepath.Join(t.TempDir(), "back")
	st, err := c.CopyOut(ctx, filepath.Join(guest, "tree"), host, safetar.Options{})
	if err != nil || st.Files != 1 || st.Symlinks != 1 {
		t.Fatalf("copy out: %v %+v", err, st)
	}
	if l, _ := os.Readlink(filepath.Join(host, "l")); l != "s/x" {
		t.Errorf("symlink %q", l)
	}
	if fi, _ := os.Stat(filepath.Join(host, "s")); fi.Mode().Perm() != 0o750 {
		t.Errorf("dir mode %v", fi.Mode())
	}
	// A symlink leaving the tree is copied as a symlink, not followed.
	os.Symlink("/etc", filepath.Join(guest, "tree", "abs"))
	host2 := filepath.Join(t.TempDir(), "links")
	if _, err := c.CopyOut(ctx, filepath.Join(guest, "tree"), host2, safetar.Options{}); err != nil {
		t.Errorf("absolute symlink: %v", err)
	}
	if l, _ := os.Readlink(filepath.Join(host2, "abs")); l != "/etc" {
		t.Errorf("absolute symlink copied as %q", l)
	}
	// A copy over its cap fails with TOO_LARGE and leaves nothing behind.
	os.WriteFile(filepath.Join(guest, "tree", "big"), make([]byte, 100), 0o644)
	host3 := filepath.Join(t.TempDir(), "capped")
	if _, err := c.CopyOut(ctx, filepath.Join(guest, "tree"), host3, safetar.Options{MaxBytes: 10}); agentapi.KindOf(err) != agentapi.FsTooLarge {
		t.Errorf("cap: %v", err)
	}
	if _, err := os.Lstat(host3); !os.IsNotExist(err) {
		t.Errorf("failed copy left %s behind", host3)
	}
	// Raw channel helpers.
	if n, err := c.Discard(ctx, 1<<20+1); err != nil || n != 1<<20+1 {
		t.Errorf("discard: %d %v", n, err)
	}
	if n, err := c.Zeros(ctx, 1<<20+1); err != nil || n != 1<<20+1 {
		t.Errorf("zeros: %d %v", n, err)
	}
}

func TestSealedRefusesChanges(t *testing.T) {
	c, _ := testClient(t, "sealed")
	ctx := context.Background()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	_, err := c.WriteFile(ctx, &pb.WriteFileHeader{Path: filepath.Join(dir, "g")}, strings.NewReader("x"))
	errs := []error{err}
	_, err = c.Agent.MakeDir(ctx, &pb.MakeDirRequest{Path: filepath.Join(dir, "d")})
	errs = append(errs, err)
	_, err = c.Agent.Remove(ctx, &pb.RemoveRequest{Path: filepath.Join(dir, "f")})
	errs = append(errs, err)
	_, err = c.Agent.Rename(ctx, &pb.RenameRequest{From: filepath.Join(dir, "f"), To: filepath.Join(dir, "h")})
	errs = append(errs, err)
	_, _, err = c.CopyIn(ctx, dir, filepath.Join(dir, "sub"))
	errs = append(errs, err)
	for i, err := range errs {
		if agentapi.KindOf(err) != agentapi.FsRefused || !agentapi.IsRefused(err) {
			t.Errorf("op %d: %v, want a sealed refusal", i, err)
		}
	}
	// Reading stays allowed.
	var out bytes.Buffer
	if _, _, err := c.ReadFile(ctx, filepath.Join(dir, "f"), &out); err != nil || out.String() != "x" {
		t.Errorf("read on sealed: %v", err)
	}
	if _, err := c.Agent.ProcStart(ctx, &pb.ProcStartRequest{Start: &pb.ExecStart{Argv: []string{"true"}}}); !agentapi.IsRefused(err) {
		t.Errorf("proc start on sealed: %v", err)
	}
}
