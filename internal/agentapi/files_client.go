package agentapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/safetar"
)

// Host-side client methods of the file RPCs.

// ReadFile streams a guest file to w and returns its info and the bytes
// written.
func (c *Client) ReadFile(ctx context.Context, p string, w io.Writer) (*pb.FileInfo, int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.ReadFile(ctx, &pb.ReadFileRequest{Path: p})
	if err != nil {
		return nil, 0, err
	}
	var info *pb.FileInfo
	var n int64
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return info, n, nil
		}
		if err != nil {
			return info, n, err
		}
		switch v := m.Msg.(type) {
		case *pb.ReadFileOutput_Info:
			info = v.Info
		case *pb.ReadFileOutput_Data:
			k, err := w.Write(v.Data)
			n += int64(k)
			if err != nil {
				return info, n, fmt.Errorf("write output: %w", err)
			}
		}
	}
}

// WriteFile streams r into a guest file described by hdr.
func (c *Client) WriteFile(ctx context.Context, hdr *pb.WriteFileHeader, r io.Reader) (*pb.WriteFileResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.WriteFile(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&pb.WriteFileInput{Msg: &pb.WriteFileInput_Header{Header: hdr}}); err != nil && err != io.EOF {
		return nil, err
	}
	buf := make([]byte, ChunkBytes)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if err := stream.Send(&pb.WriteFileInput{Msg: &pb.WriteFileInput_Data{Data: buf[:n]}}); err != nil {
				if err == io.EOF {
					break // the agent failed: CloseAndRecv has its reason
				}
				return nil, err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return nil, fmt.Errorf("read input: %w", rerr)
		}
	}
	return stream.CloseAndRecv()
}

// CopyIn copies the host path src (a file or a tree) to dst in the guest.
func (c *Client) CopyIn(ctx context.Context, src, dst string) (*pb.ArchiveInResponse, *safetar.Stats, error) {
	if _, err := os.Stat(src); err != nil {
		return nil, nil, FsErr(err, src)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.ArchiveIn(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := stream.Send(&pb.ArchiveInInput{Msg: &pb.ArchiveInInput_Header{Header: &pb.ArchiveInHeader{Path: dst}}}); err != nil && err != io.EOF {
		return nil, nil, err
	}
	msg := &pb.ArchiveInInput{}
	data := &pb.ArchiveInInput_Data{}
	msg.Msg = data
	w := NewChunkWriter(func(p []byte) error {
		data.Data = p
		return stream.Send(msg)
	})
	st, werr := safetar.Write(w, src)
	if werr == nil {
		werr = w.Flush()
	}
	if werr != nil && !errors.Is(werr, io.EOF) {
		return nil, st, FsErr(werr, src)
	}
	resp, err := stream.CloseAndRecv()
	return resp, st, err
}

// CopyOut copies the guest path src (a file or a tree) to dst on the host.
// The guest's stream is hostile: it lands as one name only, dst/base(src)
// when dst is an existing directory, dst otherwise, whatever the stream
// calls its members; modes are clamped; a failed copy leaves nothing
// behind. See safetar.Extract. o.Name and o.KeepModes are set here.
func (c *Client) CopyOut(ctx context.Context, src, dst string, o safetar.Options) (*safetar.Stats, error) {
	o.KeepModes = false
	o.Name = path.Base(path.Clean(src))
	if o.Name == "/" || o.Name == "." {
		return nil, fsErrorf(FsInvalidPath, src, "cannot copy the root itself; name a directory below it")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.ArchiveOut(ctx, &pb.ArchiveOutRequest{Path: src})
	if err != nil {
		return nil, err
	}
	r := NewChunkReader(func() ([]byte, error) {
		m, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		return m.Data, nil
	})
	// Extract reads the stream to its end: a late agent error fails it.
	st, err := safetar.Extract(r, dst, o)
	return st, FsErr(err, dst)
}
