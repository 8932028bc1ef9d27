package agentapi

import (
	"context"
	"errors"
	"fmt"
	"io"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
)

// ProcWait streams a background process's output to stdout and stderr
// from the offsets in req. gap, when set, hears of output that left the
// bounded buffer before it was read. It returns the last message: an exit
// or, with NoFollow, the running process.
func (c *Client) ProcWait(ctx context.Context, req *pb.ProcWaitRequest, stdout, stderr io.Writer, gap func(*pb.OutputGap)) (*pb.ProcOutput, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.ProcWait(ctx, req)
	if err != nil {
		return nil, err
	}
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return nil, errors.New("agent closed the output stream without an exit status")
		}
		if err != nil {
			return nil, err
		}
		switch v := m.Msg.(type) {
		case *pb.ProcOutput_Stdout:
			if _, err := stdout.Write(v.Stdout); err != nil {
				return nil, fmt.Errorf("write stdout: %w", err)
			}
		case *pb.ProcOutput_Stderr:
			if _, err := stderr.Write(v.Stderr); err != nil {
				return nil, fmt.Errorf("write stderr: %w", err)
			}
		case *pb.ProcOutput_Gap:
			if gap != nil {
				gap(v.Gap)
			}
		case *pb.ProcOutput_Exit, *pb.ProcOutput_Running:
			return m, nil
		}
	}
}

// ProcStdin copies r to a background process's stdin; closeAfter closes
// its stdin at EOF.
func (c *Client) ProcStdin(ctx context.Context, handle string, r io.Reader, closeAfter bool) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.ProcStdin(ctx)
	if err != nil {
		return 0, err
	}
	send := func(m *pb.ProcStdinInput) bool { return stream.Send(m) == nil }
	if send(&pb.ProcStdinInput{Msg: &pb.ProcStdinInput_Handle{Handle: handle}}) {
		buf := make([]byte, ChunkBytes)
		for {
			n, rerr := r.Read(buf)
			if n > 0 && !send(&pb.ProcStdinInput{Msg: &pb.ProcStdinInput_Data{Data: buf[:n]}}) {
				break
			}
			if rerr == io.EOF {
				if closeAfter {
					send(&pb.ProcStdinInput{Msg: &pb.ProcStdinInput_Close{Close: true}})
				}
				break
			}
			if rerr != nil {
				return 0, fmt.Errorf("read input: %w", rerr)
			}
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return 0, err
	}
	return resp.Bytes, nil
}
