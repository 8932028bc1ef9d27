package mcp

// The end of the client's input is not the end of its requests: a client
// may pipe a batch and close its side at once. The SDK's connection stops
// writing as soon as its reader sees EOF, so replies still being computed
// were dropped. answerAll holds the EOF back until every request that was
// read has been answered (or the output is broken, or the session is
// closed), so a piped batch gets all its replies before the server exits.

import (
	"context"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// answerAll wraps t so that its connection reports the end of input only
// once every request read from it has been answered.
func answerAll(t sdk.Transport) sdk.Transport { return answeringTransport{t} }

type answeringTransport struct{ sdk.Transport }

func (t answeringTransport) Connect(ctx context.Context) (sdk.Connection, error) {
	c, err := t.Transport.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &answeringConn{Connection: c, pending: map[jsonrpc.ID]bool{},
		drained: make(chan struct{}), closed: make(chan struct{})}, nil
}

type answeringConn struct {
	sdk.Connection

	mu      sync.Mutex
	pending map[jsonrpc.ID]bool // requests read and not answered yet
	ended   bool                // the input ended (EOF or a read error)
	broken  bool                // a write failed: nothing more can be answered
	done    bool                // drained is closed
	drained chan struct{}

	closeOnce sync.Once
	closed    chan struct{}
}

func (c *answeringConn) Read(ctx context.Context) (jsonrpc.Message, error) {
	msg, err := c.Connection.Read(ctx)
	if err == nil {
		if req, ok := msg.(*jsonrpc.Request); ok && req.IsCall() {
			c.mu.Lock()
			c.pending[req.ID] = true
			c.mu.Unlock()
		}
		return msg, nil
	}
	c.mu.Lock()
	c.ended = true
	c.checkLocked()
	c.mu.Unlock()
	select {
	case <-c.drained:
	case <-c.closed:
	case <-ctx.Done():
	}
	return nil, err
}

func (c *answeringConn) Write(ctx context.Context, msg jsonrpc.Message) error {
	err := c.Connection.Write(ctx, msg)
	resp, isResp := msg.(*jsonrpc.Response)
	if isResp || err != nil {
		c.mu.Lock()
		if isResp {
			delete(c.pending, resp.ID)
		}
		if err != nil {
			c.broken = true
		}
		c.checkLocked()
		c.mu.Unlock()
	}
	return err
}

// checkLocked releases a held EOF once nothing is left to answer.
func (c *answeringConn) checkLocked() {
	if c.ended && !c.done && (len(c.pending) == 0 || c.broken) {
		c.done = true
		close(c.drained)
	}
}

func (c *answeringConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Connection.Close()
}
