package agentapi

import (
	"context"
	"io"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
)

// Discard sends n bytes that the agent drops: the raw channel baseline.
func (c *Client) Discard(ctx context.Context, n int64) (int64, error) {
	stream, err := c.Agent.Discard(ctx)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, ChunkBytes)
	msg := &pb.DataChunk{}
	for sent := int64(0); sent < n; {
		k := min(int64(len(buf)), n-sent)
		msg.Data = buf[:k]
		if err := stream.Send(msg); err != nil {
			break
		}
		sent += k
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return 0, err
	}
	return resp.Bytes, nil
}

// Zeros receives n zero bytes from the agent and drops them.
func (c *Client) Zeros(ctx context.Context, n int64) (int64, error) {
	stream, err := c.Agent.Zeros(ctx, &pb.ZerosRequest{Bytes: n})
	if err != nil {
		return 0, err
	}
	var got int64
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got += int64(len(m.Data))
	}
}
