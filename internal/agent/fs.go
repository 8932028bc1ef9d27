package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"syscall"

	"github.com/mvm-sandbox/mvm/internal/errdefs"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/safetar"
	"golang.org/x/sys/unix"
)

// File RPCs. Paths are absolute guest paths; every error is an
// agentapi.FsError, which travels as a status with an FsError detail.
//
// A sealed image allows the read-only operations (Stat, ListDir, ReadFile,
// ArchiveOut) and refuses every change (WriteFile, MakeDir, Remove, Rename,
// ArchiveIn): a changed file can change what the declared command runs, so
// writes are a form of ad-hoc execution.

func (s *server) sealed() bool { return s.image.Profile == "sealed" }

func (s *server) refuseIfSealed(p string) error {
	if s.sealed() {
		return agentapi.RefusedSealed(p)
	}
	return nil
}

func fileType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "dir"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "char"
	case m&fs.ModeDevice != 0:
		return "block"
	}
	return "file"
}

func fileInfo(p string, fi fs.FileInfo) *pb.FileInfo {
	out := &pb.FileInfo{
		Name: fi.Name(), Path: p, Type: fileType(fi.Mode()),
		Mode: uint32(fi.Mode().Perm()), Size: fi.Size(), MtimeUnixNano: fi.ModTime().UnixNano(),
	}
	m := fi.Mode()
	if m&fs.ModeSetuid != 0 {
		out.Mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		out.Mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		out.Mode |= 0o1000
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		out.Uid, out.Gid = st.Uid, st.Gid
	}
	if out.Type == "symlink" {
		out.LinkTarget, _ = os.Readlink(p)
	}
	return out
}

func (s *server) Stat(_ context.Context, req *pb.StatRequest) (*pb.FileInfo, error) {
	p, err := agentapi.CleanGuestPath(req.Path)
	if err != nil {
		return nil, err
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return nil, agentapi.FsErr(err, p)
	}
	return fileInfo(p, fi), nil
}

func (s *server) ListDir(_ context.Context, req *pb.ListDirRequest) (*pb.ListDirResponse, error) {
	p, err := agentapi.CleanGuestPath(req.Path)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, agentapi.FsErr(err, p)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, agentapi.FsErr(err, p)
	} else if !fi.IsDir() {
		return nil, agentapi.FsErr(syscall.ENOTDIR, p)
	}
	ents, err := f.ReadDir(agentapi.MaxListEntries + 1)
	if err != nil && err != io.EOF {
		return nil, agentapi.FsErr(err, p)
	}
	out := &pb.ListDirResponse{}
	if len(ents) > agentapi.MaxListEntries {
		ents, out.Truncated = ents[:agentapi.MaxListEntries], true
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out.Entries = append(out.Entries, fileInfo(path.Join(p, e.Name()), fi))
	}
	sort.Slice(out.Entries, func(i, j int) bool { return out.Entries[i].Name < out.Entries[j].Name })
	return out, nil
}

func (s *server) MakeDir(_ context.Context, req *pb.MakeDirRequest) (*pb.FileInfo, error) {
	p, err := agentapi.CleanGuestPath(req.Path)
	if err != nil {
		return nil, err
	}
	if err := s.refuseIfSealed(p); err != nil {
		return nil, err
	}
	mode := fs.FileMode(req.Mode & 0o7777)
	if req.Mode == 0 {
		mode = 0o755
	}
	existed := false
	if req.Parents {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			existed = true
		} else if err := os.MkdirAll(path.Dir(p), 0o755); err != nil {
			return nil, agentapi.FsErr(err, p)
		}
	}
	if !existed {
		if err := os.Mkdir(p, mode&0o777); err != nil {
			return nil, agentapi.FsErr(err, p)
		}
		// Mkdir is subject to the umask; the requested mode is exact.
		if err := unix.Chmod(p, uint32(mode)); err != nil {
			return nil, agentapi.FsErr(err, p)
		}
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return nil, agentapi.FsErr(err, p)
	}
	return fileInfo(p, fi), nil
}

func (s *server) Remove(_ context.Context, req *pb.RemoveRequest) (*pb.RemoveResponse, error) {
	p, err := agentapi.CleanGuestPath(req.Path)
	if err != nil {
		return nil, err
	}
	if err := s.refuseIfSealed(p); err != nil {
		return nil, err
	}
	if p == "/" {
		return nil, &agentapi.FsError{Kind: agentapi.FsInvalidPath, Path: p, Detail: "refusing to remove the root"}
	}
	if _, err := os.Lstat(p); err != nil {
		return nil, agentapi.FsErr(err, p)
	}
	if req.Recursive {
		err = os.RemoveAll(p)
	} else {
		err = os.Remove(p)
	}
	if err != nil {
		return nil, agentapi.FsErr(err, p)
	}
	return &pb.RemoveResponse{}, nil
}

// Rename has mv semantics: an existing directory as the destination
// receives the source inside it.
func (s *server) Rename(_ context.Context, req *pb.RenameRequest) (*pb.FileInfo, error) {
	from, err := agentapi.CleanGuestPath(req.From)
	if err != nil {
		return nil, err
	}
	to, err := agentapi.CleanGuestPath(req.To)
	if err != nil {
		return nil, err
	}
	if err := s.refuseIfSealed(to); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(from); err != nil {
		return nil, agentapi.FsErr(err, from)
	}
	if fi, err := os.Stat(to); err == nil && fi.IsDir() {
		to = path.Join(to, path.Base(from))
	}
	if req.NoReplace {
		err = unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
			if _, lerr := os.Lstat(to); lerr == nil {
				err = unix.EEXIST
			} else {
				err = os.Rename(from, to)
			}
		}
	} else {
		err = os.Rename(from, to)
	}
	if err != nil {
		return nil, agentapi.FsErr(err, to)
	}
	fi, err := os.Lstat(to)
	if err != nil {
		return nil, agentapi.FsErr(err, to)
	}
	return fileInfo(to, fi), nil
}

func (s *server) ReadFile(req *pb.ReadFileRequest, stream pb.Agent_ReadFileServer) error {
	p, err := agentapi.CleanGuestPath(req.Path)
	if err != nil {
		return err
	}
	if req.Offset < 0 || req.Limit < 0 {
		return errdefs.New(errdefs.KindInvalidArgument, errors.New("offset and limit must not be negative"))
	}
	f, err := os.Open(p)
	if err != nil {
		return agentapi.FsErr(err, p)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return agentapi.FsErr(err, p)
	}
	if fi.IsDir() {
		return agentapi.FsErr(syscall.EISDIR, p)
	}
	if err := stream.Send(&pb.ReadFileOutput{Msg: &pb.ReadFileOutput_Info{Info: fileInfo(p, fi)}}); err != nil {
		return err
	}
	var r io.Reader = f
	if req.Offset > 0 {
		if _, err := f.Seek(req.Offset, io.SeekStart); err != nil {
			return agentapi.FsErr(err, p)
		}
	}
	if req.Limit > 0 {
		r = io.LimitReader(f, req.Limit)
	}
	buf := make([]byte, agentapi.ChunkBytes)
	data := &pb.ReadFileOutput_Data{}
	msg := &pb.ReadFileOutput{Msg: data}
	for {
		n, err := r.Read(buf)
		if n > 0 {
			data.Data = buf[:n]
			if serr := stream.Send(msg); serr != nil {
				return serr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return agentapi.FsErr(err, p)
		}
	}
}

func (s *server) WriteFile(stream pb.Agent_WriteFileServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHeader()
	if h == nil {
		return errdefs.New(errdefs.KindInvalidArgument, errors.New("the first WriteFile message must be a header"))
	}
	p, err := agentapi.CleanGuestPath(h.Path)
	if err != nil {
		return err
	}
	if err := s.refuseIfSealed(p); err != nil {
		return err
	}
	if h.MakeParents {
		if err := os.MkdirAll(path.Dir(p), 0o755); err != nil {
			return agentapi.FsErr(err, path.Dir(p))
		}
	}
	flags := os.O_WRONLY | os.O_CREATE
	if h.Append {
		flags |= os.O_APPEND
	} else {
		flags |= os.O_TRUNC
	}
	if h.NoReplace {
		flags |= os.O_EXCL
	}
	mode := fs.FileMode(0o644)
	if h.HasMode {
		mode = fs.FileMode(h.Mode & 0o777)
	}
	if fi, err := os.Stat(p); err == nil && fi.IsDir() {
		return agentapi.FsErr(syscall.EISDIR, p)
	}
	f, err := os.OpenFile(p, flags, mode)
	if err != nil {
		return agentapi.FsErr(err, p)
	}
	defer f.Close()
	if h.HasMode {
		if err := unix.Fchmod(int(f.Fd()), h.Mode&0o7777); err != nil {
			return agentapi.FsErr(err, p)
		}
	}
	var n int64
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		d := m.GetData()
		if d == nil && m.GetHeader() != nil {
			return errdefs.New(errdefs.KindInvalidArgument, errors.New("WriteFile: a second header"))
		}
		k, err := f.Write(d)
		n += int64(k)
		if err != nil {
			return agentapi.FsErr(err, p)
		}
	}
	if err := f.Close(); err != nil {
		return agentapi.FsErr(err, p)
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return agentapi.FsErr(err, p)
	}
	return stream.SendAndClose(&pb.WriteFileResponse{Bytes: n, Info: fileInfo(p, fi)})
}

func (s *server) ArchiveOut(req *pb.ArchiveOutRequest, stream pb.Agent_ArchiveOutServer) error {
	p, err := agentapi.CleanGuestPath(req.Path)
	if err != nil {
		return err
	}
	msg := &pb.DataChunk{}
	w := agentapi.NewChunkWriter(func(b []byte) error {
		msg.Data = b
		return stream.Send(msg)
	})
	if _, err := safetar.Write(w, p); err != nil {
		return agentapi.FsErr(err, p)
	}
	return w.Flush()
}

func (s *server) ArchiveIn(stream pb.Agent_ArchiveInServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHeader()
	if h == nil {
		return errdefs.New(errdefs.KindInvalidArgument, errors.New("the first ArchiveIn message must be a header"))
	}
	p, err := agentapi.CleanGuestPath(h.Path)
	if err != nil {
		return err
	}
	if err := s.refuseIfSealed(p); err != nil {
		return err
	}
	r := agentapi.NewChunkReader(func() ([]byte, error) {
		m, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		if m.GetHeader() != nil {
			return nil, errdefs.New(errdefs.KindInvalidArgument, errors.New("ArchiveIn: a second header"))
		}
		return m.GetData(), nil
	})
	// The host is trusted here: modes are kept as sent (setuid included,
	// the host user administers the guest) and the stream names its
	// top-level member. Extraction is as safe as on the host otherwise.
	st, err := safetar.Extract(r, p, safetar.Options{KeepModes: true})
	if err != nil {
		return agentapi.FsErr(err, p)
	}
	return stream.SendAndClose(&pb.ArchiveInResponse{
		Files: st.Files, Dirs: st.Dirs, Symlinks: st.Symlinks, Bytes: st.Bytes, Skipped: st.Skipped, Root: st.Root,
	})
}

// Discard drops a stream of chunks: the raw channel throughput baseline.
func (s *server) Discard(stream pb.Agent_DiscardServer) error {
	var n int64
	m := &pb.DataChunk{}
	for {
		if err := stream.RecvMsg(m); err != nil {
			if err == io.EOF {
				return stream.SendAndClose(&pb.DiscardResponse{Bytes: n})
			}
			return err
		}
		n += int64(len(m.Data))
	}
}

// maxZeros caps one Zeros request (1 TiB).
const maxZeros = 1 << 40

func (s *server) Zeros(req *pb.ZerosRequest, stream pb.Agent_ZerosServer) error {
	if req.Bytes < 0 || req.Bytes > maxZeros {
		return errdefs.Errorf(errdefs.KindInvalidArgument, "bytes must be between 0 and %d", int64(maxZeros))
	}
	buf := make([]byte, agentapi.ChunkBytes)
	msg := &pb.DataChunk{}
	for left := req.Bytes; left > 0; {
		k := min(int64(len(buf)), left)
		msg.Data = buf[:k]
		if err := stream.Send(msg); err != nil {
			return fmt.Errorf("zeros: %w", err)
		}
		left -= k
	}
	return nil
}
