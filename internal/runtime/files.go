package runtime

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/safetar"
)

// FileInfo describes a guest path. The runtime's own type: the agent's
// protobuf messages stay below the runtime.
type FileInfo struct {
	Name string // base name
	Path string // absolute guest path
	// Type is "file", "dir", "symlink", "fifo", "socket", "char" or "block".
	Type       string
	Mode       uint32 // permission bits (07777)
	Size       int64
	Mtime      time.Time
	UID, GID   uint32
	LinkTarget string // for symlinks
}

// DirList is a guest directory's listing.
type DirList struct {
	Entries []FileInfo
	// Truncated: the directory holds more than agentapi.MaxListEntries.
	Truncated bool
}

// WriteResult is what a file write did.
type WriteResult struct {
	Bytes int64
	Info  FileInfo
}

// CopyStats counts what a copy moved.
type CopyStats struct {
	Files, Dirs, Symlinks, Skipped, Bytes int64
	// Root is the path the copied top-level member took (a guest path for
	// copies in, a host path for copies out).
	Root string
}

func fileInfo(fi *pb.FileInfo) FileInfo {
	if fi == nil {
		return FileInfo{}
	}
	return FileInfo{Name: fi.Name, Path: fi.Path, Type: fi.Type, Mode: fi.Mode, Size: fi.Size,
		Mtime: time.Unix(0, fi.MtimeUnixNano), UID: fi.Uid, GID: fi.Gid, LinkTarget: fi.LinkTarget}
}

func fileInfoPtr(fi *pb.FileInfo, err error) (*FileInfo, error) {
	if err != nil {
		return nil, err
	}
	out := fileInfo(fi)
	return &out, nil
}

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
func (r *Runtime) FsStat(ctx context.Context, name, p string) (fi *FileInfo, err error) {
	if err := guestPaths(&p); err != nil {
		return nil, err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		fi, err = fileInfoPtr(c.Agent.Stat(ctx, &pb.StatRequest{Path: p}))
		return err
	})
	return fi, err
}

// FsList lists a guest directory.
func (r *Runtime) FsList(ctx context.Context, name, p string) (out *DirList, err error) {
	if err := guestPaths(&p); err != nil {
		return nil, err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		ls, err := c.Agent.ListDir(ctx, &pb.ListDirRequest{Path: p})
		if err != nil {
			return err
		}
		if len(ls.Entries) > agentapi.MaxListEntries {
			return fmt.Errorf("agent protocol: %d entries exceed the cap of %d", len(ls.Entries), agentapi.MaxListEntries)
		}
		out = &DirList{Entries: make([]FileInfo, 0, len(ls.Entries)), Truncated: ls.Truncated}
		for _, e := range ls.Entries {
			out.Entries = append(out.Entries, fileInfo(e))
		}
		return nil
	})
	return out, err
}

// FsMkdir creates a guest directory; mode 0 means 0755.
func (r *Runtime) FsMkdir(ctx context.Context, name, p string, mode uint32, parents bool) (fi *FileInfo, err error) {
	if err := guestPaths(&p); err != nil {
		return nil, err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		fi, err = fileInfoPtr(c.Agent.MakeDir(ctx, &pb.MakeDirRequest{Path: p, Mode: mode, Parents: parents}))
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
func (r *Runtime) FsMove(ctx context.Context, name, from, to string, noReplace bool) (fi *FileInfo, err error) {
	if err := guestPaths(&from, &to); err != nil {
		return nil, err
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		fi, err = fileInfoPtr(c.Agent.Rename(ctx, &pb.RenameRequest{From: from, To: to, NoReplace: noReplace}))
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
	// What reaches the caller (CLI, MCP, SDK) never holds a secret's
	// value, even read from /run/secrets.
	if red := r.Redactor(name); !red.Empty() {
		rw := red.Writer(w)
		defer rw.Flush()
		w = rw
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
func (r *Runtime) FsWrite(ctx context.Context, name, p string, rd io.Reader, o FsWriteOptions) (res *WriteResult, err error) {
	if err := guestPaths(&p); err != nil {
		return nil, err
	}
	if o.Mode > 0o7777 {
		return nil, &agentapi.FsError{Kind: agentapi.FsInvalidPath, Path: p, Detail: fmt.Sprintf("mode %o: must be at most 07777", o.Mode)}
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		resp, err := c.WriteFile(ctx, &pb.WriteFileHeader{Path: p, Mode: o.Mode, HasMode: o.HasMode,
			NoReplace: o.NoReplace, Append: o.Append, MakeParents: o.Parents}, rd)
		if err == nil {
			res = &WriteResult{Bytes: resp.Bytes, Info: fileInfo(resp.Info)}
		}
		return err
	})
	if err == nil {
		err = r.auditOp(name, evidence.KindFileCopied, map[string]any{"direction": "in", "op": "write", "path_sha256": pathHash(p), "bytes": res.Bytes})
	}
	return res, err
}

// CopyIn copies a host file or tree to a guest path.
func (r *Runtime) CopyIn(ctx context.Context, name, hostSrc, guestDst string) (st *CopyStats, err error) {
	if err := guestPaths(&guestDst); err != nil {
		return nil, err
	}
	if _, err := os.Stat(hostSrc); err != nil {
		return nil, agentapi.FsErr(err, hostSrc)
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		resp, _, err := c.CopyIn(ctx, hostSrc, guestDst)
		if err == nil {
			st = &CopyStats{Files: resp.Files, Dirs: resp.Dirs, Symlinks: resp.Symlinks, Bytes: resp.Bytes,
				Skipped: resp.Skipped, Root: resp.Root}
		}
		return err
	})
	if err == nil {
		err = r.auditOp(name, evidence.KindFileCopied, map[string]any{"direction": "in", "op": "cp",
			"path_sha256": pathHash(guestDst), "files": st.Files, "dirs": st.Dirs, "symlinks": st.Symlinks, "bytes": st.Bytes})
	}
	return st, err
}

// CopyOut copies a guest file or tree to a host path. The guest chooses
// nothing on the host: the tree lands as hostDst/base(guestSrc) when
// hostDst is an existing directory, as hostDst otherwise, modes clamped,
// symlinks copied as symlinks; a failed copy leaves nothing behind (see
// safetar.Extract). maxBytes caps the file bytes: 0 means
// agentapi.DefaultCopyOutBytes, a negative value no cap.
func (r *Runtime) CopyOut(ctx context.Context, name, guestSrc, hostDst string, maxBytes int64) (st *CopyStats, err error) {
	if err := guestPaths(&guestSrc); err != nil {
		return nil, err
	}
	hostDst, err = filepath.Abs(hostDst)
	if err != nil {
		return nil, err
	}
	switch {
	case maxBytes == 0:
		maxBytes = agentapi.DefaultCopyOutBytes
	case maxBytes < 0:
		maxBytes = 0
	}
	err = r.withAgent(ctx, name, func(c *agentapi.Client) error {
		ts, err := c.CopyOut(ctx, guestSrc, hostDst, safetar.Options{MaxBytes: maxBytes})
		if err == nil {
			st = &CopyStats{Files: ts.Files, Dirs: ts.Dirs, Symlinks: ts.Symlinks, Bytes: ts.Bytes, Skipped: ts.Skipped, Root: ts.Root}
		}
		return err
	})
	if err == nil {
		err = r.auditOp(name, evidence.KindFileCopied, map[string]any{"direction": "out", "op": "cp",
			"path_sha256": pathHash(guestSrc), "files": st.Files, "dirs": st.Dirs, "symlinks": st.Symlinks, "bytes": st.Bytes, "skipped": st.Skipped})
	}
	return st, err
}
