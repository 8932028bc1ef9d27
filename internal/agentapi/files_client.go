package agentapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
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
func (c *Client) CopyIn(ctx context.Context, src, dst string) (*pb.ArchiveInResponse, *TarStats, error) {
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
	st, werr := WriteTar(w, src)
	if werr == nil {
		werr = w.Flush()
	}
	if werr != nil && !errors.Is(werr, io.EOF) {
		return nil, st, werr
	}
	resp, err := stream.CloseAndRecv()
	return resp, st, err
}

// CopyOut copies the guest path src (a file or a tree) to dst on the host.
// Everything the guest sends is checked: see ExtractTar.
func (c *Client) CopyOut(ctx context.Context, src, dst string, o ExtractOptions) (*TarStats, error) {
	o.KeepSpecialBits, o.AllowEscapingSymlinks = false, false
	// What the copy creates; removed again when the copy fails and it did
	// not exist before, so a refused stream leaves nothing behind.
	target := dst
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		target = filepath.Join(dst, path.Base(path.Clean(src)))
	}
	_, lerr := os.Lstat(target)
	created := errors.Is(lerr, os.ErrNotExist)
	st, err := c.copyOut(ctx, src, dst, o)
	if err != nil && created {
		os.RemoveAll(target)
	}
	return st, err
}

func (c *Client) copyOut(ctx context.Context, src, dst string, o ExtractOptions) (*TarStats, error) {
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
	st, err := ExtractTar(r, dst, o)
	if err != nil {
		return st, err
	}
	// The stream must end cleanly: a late agent error still counts.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return st, err
	}
	return st, nil
}
