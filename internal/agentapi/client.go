package agentapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Client is a host-side connection to one guest agent.
type Client struct {
	conn  *grpc.ClientConn
	Agent pb.AgentClient
	Hello *pb.HelloResponse
}

// HelloTimeout bounds Dial's handshake with an agent that accepted the
// connection but does not answer.
const HelloTimeout = time.Minute

// Dial connects to an agent through dial (a supervisor's proxy socket, or
// a yamux session) and checks the protocol with Hello.
func Dial(ctx context.Context, dial func(context.Context) (net.Conn, error)) (*Client, error) {
	conn, err := grpc.NewClient("passthrough:///mvm-agent",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dial(ctx) }),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMessageBytes),
			grpc.MaxCallSendMsgSize(MaxMessageBytes),
		),
		// Errors come back in the one error model: the kind the agent
		// put in the status details (errdefs), the status message.
		grpc.WithChainUnaryInterceptor(errdefs.UnaryClientInterceptor),
		grpc.WithChainStreamInterceptor(errdefs.StreamClientInterceptor),
		grpc.WithReadBufferSize(256<<10),
		grpc.WithWriteBufferSize(256<<10),
	)
	if err != nil {
		return nil, fmt.Errorf("agent client: %w", err)
	}
	c := &Client{conn: conn, Agent: pb.NewAgentClient(conn)}
	// Fail fast: the peer is a local socket that is either there or gone
	// for good (its supervisor died). Waiting for it to come back would
	// hang a caller whose context has no deadline.
	hctx, cancel := context.WithTimeout(ctx, HelloTimeout)
	defer cancel()
	hello, err := c.Agent.Hello(hctx, &pb.HelloRequest{ProtocolVersion: ProtocolVersion})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("agent hello: %w", err)
	}
	if hello.ProtocolVersion < MinProtocolVersion {
		conn.Close()
		return nil, fmt.Errorf("agent speaks protocol %d, this mvmctl needs at least %d: rebuild the guest image", hello.ProtocolVersion, MinProtocolVersion)
	}
	c.Hello = hello
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// ExecRequest describes one process to run.
type ExecRequest struct {
	Argv       []string
	Env        map[string]string
	Cwd        string
	TTY        bool
	Rows, Cols uint32
	Entrypoint bool
	// Stdin, when not nil, is copied to the process; EOF closes its stdin.
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Started, when set, is called with the guest pid once the process runs.
	Started func(pid int32)
	// Control, when set, receives signals and resizes to forward.
	Control <-chan *pb.ExecInput
	// Bundle runs the process in a bundle sandbox's root (Env is then
	// unused: Bundle.Env is the whole environment); ID names it.
	Bundle *pb.BundleProcess
	ID     string
}

// ExecResult is how a process ended.
type ExecResult struct {
	ExitCode int
	Signal   int
	Stdout   int64 // bytes received
	Stderr   int64
}

// Exec runs req in the guest and waits for it to end. Output is written
// to req.Stdout and req.Stderr as it arrives. Cancelling ctx kills the
// process.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (*ExecResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Agent.Exec(ctx)
	if err != nil {
		return nil, err
	}
	start := &pb.ExecStart{
		Argv: req.Argv, Env: req.Env, Cwd: req.Cwd,
		Stdin: req.Stdin != nil, Tty: req.TTY, Rows: req.Rows, Cols: req.Cols,
		Entrypoint: req.Entrypoint, Bundle: req.Bundle, Id: req.ID,
	}
	var sendMu sync.Mutex
	send := func(m *pb.ExecInput) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(m)
	}
	if err := send(&pb.ExecInput{Msg: &pb.ExecInput_Start{Start: start}}); err != nil {
		return nil, err
	}
	// First answer: started, or the reason the process could not start.
	first, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	st, ok := first.Msg.(*pb.ExecOutput_Started)
	if !ok {
		return nil, fmt.Errorf("agent protocol: expected started, got %T", first.Msg)
	}
	if req.Started != nil {
		req.Started(st.Started.Pid)
	}
	// The stdin and control pumps end with ctx; they are not waited for,
	// since a terminal's Read can block forever.
	if req.Stdin != nil {
		go func() {
			buf := make([]byte, ChunkBytes)
			for {
				n, rerr := req.Stdin.Read(buf)
				if n > 0 {
					if send(&pb.ExecInput{Msg: &pb.ExecInput_Stdin{Stdin: append([]byte(nil), buf[:n]...)}}) != nil {
						return
					}
				}
				if rerr != nil {
					send(&pb.ExecInput{Msg: &pb.ExecInput_CloseStdin{CloseStdin: true}})
					return
				}
			}
		}()
	}
	if req.Control != nil {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case m, ok := <-req.Control:
					if !ok || send(m) != nil {
						return
					}
				}
			}
		}()
	}
	res := &ExecResult{}
	for {
		out, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("agent closed the stream without an exit status")
			}
			return nil, err
		}
		switch m := out.Msg.(type) {
		case *pb.ExecOutput_Stdout:
			res.Stdout += int64(len(m.Stdout))
			if req.Stdout != nil {
				if _, err := req.Stdout.Write(m.Stdout); err != nil {
					return nil, fmt.Errorf("write stdout: %w", err)
				}
			}
		case *pb.ExecOutput_Stderr:
			res.Stderr += int64(len(m.Stderr))
			if req.Stderr != nil {
				if _, err := req.Stderr.Write(m.Stderr); err != nil {
					return nil, fmt.Errorf("write stderr: %w", err)
				}
			}
		case *pb.ExecOutput_Exit:
			res.ExitCode, res.Signal = int(m.Exit.Code), int(m.Exit.Signal)
			return res, nil
		}
	}
}

// IsNotFound reports whether err says the command does not exist.
// Deprecated: use errdefs.IsNotFound (and errdefs.ReasonOf).
func IsNotFound(err error) bool {
	return errdefs.IsNotFound(err) && errdefs.ReasonOf(err) != errdefs.ReasonSandbox
}

// IsPermissionDenied reports whether err says the command may not run.
// Deprecated: use errdefs.IsPermissionDenied.
func IsPermissionDenied(err error) bool { return errdefs.IsPermissionDenied(err) }

// IsRefused reports whether a policy (the image profile) refused the
// request; other failed preconditions (no open stdin, not a directory) are
// not refusals. Deprecated: use errdefs.IsRefused.
func IsRefused(err error) bool { return errdefs.IsRefused(err) }

// Message is the human part of an agent error.
func Message(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Message()
	}
	return err.Error()
}
