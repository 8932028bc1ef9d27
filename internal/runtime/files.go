package runtime

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/evidence"
)

// withAgent connects to a running sandbox, runs fn and closes the client.
func (r *Runtime) withAgent(ctx context.Context, nameOrID string, fn func(*agentapi.Client) error) error {
	c, _, err := r.Connect(ctx, nameOrID)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

// guestPaths validates guest paths on the host before anything is sent.
func guestPaths(ps ...*string) error {
	for _, p := range ps {
		clean, err := agentapi.CleanGuestPath(*p)
		if err != nil {
			return err
		}
		*p = clean
	}
	return nil
}

// FsStat describes a guest path (symlinks are not followed).
func (r *Runtime) FsStat(ctx context.Context, name, p string) (fi *pb.FileInfo, err error) {
	if err := guestPaths(&p); err != nil {
		return nil, err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		fi, err = c.Agent.Stat(ctx, &pb.StatRequest{Path: p})
		return err
	})
	return fi, err
}

// FsList lists a guest directory.
func (r *Runtime) FsList(ctx context.Context, name, p string) (out *pb.ListDirResponse, err error) {
	if err := guestPaths(&p); err != nil {
		return nil, err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		out, err = c.Agent.ListDir(ctx, &pb.ListDirRequest{Path: p})
		if err == nil && len(out.Entries) > agentapi.MaxListEntries {
			return fmt.Errorf("agent protocol: %d entries exceed the cap of %d", len(out.Entries), agentapi.MaxListEntries)
		}
		return err
	})
	return out, err
}

// FsMkdir creates a guest directory; mode 0 means 0755.
func (r *Runtime) FsMkdir(ctx context.Context, name, p string, mode uint32, parents bool) (fi *pb.FileInfo, err error) {
	if err := guestPaths(&p); err != nil {
		return nil, err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		fi, err = c.Agent.MakeDir(ctx, &pb.MakeDirRequest{Path: p, Mode: mode, Parents: parents})
		return err
	})
	if err == nil {
		err = r.auditOp(name, "file.changed", map[string]any{"op": "mkdir", "path_sha256": pathHash(p)})
	}
	return fi, err
}

// FsRemove removes a guest path (a tree with recursive).
func (r *Runtime) FsRemove(ctx context.Context, name, p string, recursive bool) error {
	if err := guestPaths(&p); err != nil {
		return err
	}
	err := r.withAgent(ctx, name, func(c *agentapi.Client) error {
		_, err := c.Agent.Remove(ctx, &pb.RemoveRequest{Path: p, Recursive: recursive})
		return err
	})
	if err == nil {
		err = r.auditOp(name, "file.changed", map[string]any{"op": "remove", "recursive": recursive, "path_sha256": pathHash(p)})
	}
	return err
}

// FsMove renames a guest path; an existing directory receives it inside.
func (r *Runtime) FsMove(ctx context.Context, name, from, to string, noReplace bool) (fi *pb.FileInfo, err error) {
	if err := guestPaths(&from, &to); err != nil {
		return nil, err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		fi, err = c.Agent.Rename(ctx, &pb.RenameRequest{From: from, To: to, NoReplace: noReplace})
		return err
	})
	if err == nil {
		err = r.auditOp(name, "file.changed", map[string]any{"op": "move", "path_sha256": pathHash(from), "to_sha256": pathHash(to)})
	}
	return fi, err
}

// FsRead streams a guest file to w.
func (r *Runtime) FsRead(ctx context.Context, name, p string, w io.Writer) (n int64, err error) {
	if err := guestPaths(&p); err != nil {
		return 0, err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		_, n, err = c.ReadFile(ctx, p, w)
		return err
	})
	if err == nil {
		err = r.auditOp(name, evidence.KindFileCopied, map[string]any{"direction": "out", "op": "read", "path_sha256": pathHash(p), "bytes": n})
	}
	return n, err
}

// FsWriteOptions shape a guest file write.
type FsWriteOptions struct {
	Mode      uint32
	HasMode   bool
	NoReplace bool
	Append    bool
	Parents   bool
}

// FsWrite streams rd into a guest file.
func (r *Runtime) FsWrite(ctx context.Context, name, p string, rd io.Reader, o FsWriteOptions) (resp *pb.WriteFileResponse, err error) {
	if err := guestPaths(&p); err != nil {
		return nil, err
	}
	if o.Mode > 0o7777 {
		return nil, &agentapi.FsError{Kind: agentapi.FsInvalidPath, Path: p, Detail: fmt.Sprintf("mode %o: must be at most 07777", o.Mode)}
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		resp, err = c.WriteFile(ctx, &pb.WriteFileHeader{Path: p, Mode: o.Mode, HasMode: o.HasMode,
			NoReplace: o.NoReplace, Append: o.Append, MakeParents: o.Parents}, rd)
		return err
	})
	if err == nil {
		err = r.auditOp(name, evidence.KindFileCopied, map[string]any{"direction": "in", "op": "write", "path_sha256": pathHash(p), "bytes": resp.Bytes})
	}
	return resp, err
}

// CopyIn copies a host file or tree to a guest path.
func (r *Runtime) CopyIn(ctx context.Context, name, hostSrc, guestDst string) (resp *pb.ArchiveInResponse, err error) {
	if err := guestPaths(&guestDst); err != nil {
		return nil, err
	}
	if _, err := os.Stat(hostSrc); err != nil {
		return nil, agentapi.FsErr(err, hostSrc)
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		resp, _, err = c.CopyIn(ctx, hostSrc, guestDst)
		return err
	})
	if err == nil {
		err = r.auditOp(name, evidence.KindFileCopied, map[string]any{"direction": "in", "op": "cp",
			"path_sha256": pathHash(guestDst), "files": resp.Files, "dirs": resp.Dirs, "symlinks": resp.Symlinks, "bytes": resp.Bytes})
	}
	return resp, err
}

// CopyOut copies a guest file or tree to a host path. Nothing is written
// outside hostDst (see agentapi.ExtractTar); maxBytes caps the file bytes
// (0 = no cap).
func (r *Runtime) CopyOut(ctx context.Context, name, guestSrc, hostDst string, maxBytes int64) (st *agentapi.TarStats, err error) {
	if err := guestPaths(&guestSrc); err != nil {
		return nil, err
	}
	hostDst, err = filepath.Abs(hostDst)
	if err != nil {
		return nil, err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		st, err = c.CopyOut(ctx, guestSrc, hostDst, agentapi.ExtractOptions{MaxBytes: maxBytes})
		return err
	})
	if err == nil {
		err = r.auditOp(name, evidence.KindFileCopied, map[string]any{"direction": "out", "op": "cp",
			"path_sha256": pathHash(guestSrc), "files": st.Files, "dirs": st.Dirs, "symlinks": st.Symlinks, "bytes": st.Bytes, "skipped": st.Skipped})
	}
	return st, err
}
