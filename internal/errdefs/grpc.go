package errdefs

import (
	"context"
	"errors"
	"io"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain is the google.rpc.ErrorInfo domain of mvm's error details.
const Domain = "mvm"

// maxReason caps a reason read from the wire (the guest is hostile).
const maxReason = 64

// codeOf is the gRPC code a kind travels with. The code is for generic gRPC
// tooling only; the kind itself is in the details.
var codeOf = map[Kind]codes.Code{
	Unknown:                codes.Unknown,
	KindNotFound:           codes.NotFound,
	KindAlreadyExists:      codes.AlreadyExists,
	KindInvalidArgument:    codes.InvalidArgument,
	KindRefused:            codes.PermissionDenied,
	KindPermissionDenied:   codes.PermissionDenied,
	KindFailedPrecondition: codes.FailedPrecondition,
	KindLimitExceeded:      codes.ResourceExhausted,
	KindTimeout:            codes.DeadlineExceeded,
	KindBusy:               codes.Aborted,
	KindGuest:              codes.Internal,
	KindTransport:          codes.Unavailable,
	KindUnavailable:        codes.Unavailable,
	KindCanceled:           codes.Canceled,
}

// kindOfCode classifies a status that carries no mvm details: one made by
// gRPC itself (a broken connection, a message over the size cap) or by a
// peer that does not speak this model. FailedPrecondition is not a refusal.
var kindOfCode = map[codes.Code]Kind{
	codes.NotFound:           KindNotFound,
	codes.AlreadyExists:      KindAlreadyExists,
	codes.InvalidArgument:    KindInvalidArgument,
	codes.OutOfRange:         KindInvalidArgument,
	codes.PermissionDenied:   KindPermissionDenied,
	codes.FailedPrecondition: KindFailedPrecondition,
	codes.ResourceExhausted:  KindLimitExceeded,
	codes.DeadlineExceeded:   KindTimeout,
	codes.Aborted:            KindBusy,
	codes.Unavailable:        KindTransport,
	codes.Internal:           KindTransport,
	codes.Unknown:            KindGuest,
	codes.Unimplemented:      KindUnavailable,
	codes.Canceled:           KindCanceled,
}

// Code is the gRPC code of kind k.
func Code(k Kind) codes.Code {
	if c, ok := codeOf[k]; ok {
		return c
	}
	return codes.Unknown
}

// GRPCStatus makes an *Error travel as a gRPC status: code from its kind,
// kind and reason in a google.rpc.ErrorInfo detail. grpc-go calls it for an
// error a handler returns, also through fmt.Errorf wrapping.
func (e *Error) GRPCStatus() *status.Status {
	if r, ok := e.Err.(*remoteError); ok {
		return r.st // received from a peer: pass it on unchanged
	}
	st := status.New(Code(e.Kind), e.Error())
	info := &errdetails.ErrorInfo{Reason: wireKind(e.Kind), Domain: Domain}
	if e.Reason != "" {
		info.Metadata = map[string]string{"reason": e.Reason}
	}
	if d, err := st.WithDetails(info); err == nil {
		return d
	}
	return st
}

func wireKind(k Kind) string {
	if k == Unknown {
		return "UNKNOWN"
	}
	return strings.ToUpper(string(k))
}

// ToGRPC turns err into a gRPC status error that carries its kind (for a
// server: the agent). An error that is already a status is returned as is;
// context errors keep their gRPC meaning.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	var k Kinded
	if errors.As(err, &k) {
		kind, reason := k.ErrKind()
		e, ok := k.(*Error)
		if !ok {
			e = &Error{Kind: kind, Reason: reason, Err: k}
		}
		st := e.GRPCStatus()
		p := st.Proto()
		p.Message = err.Error()
		return status.FromProto(p).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return (&Error{Kind: KindTimeout, Err: err}).GRPCStatus().Err()
	case errors.Is(err, context.Canceled):
		return (&Error{Kind: KindCanceled, Err: err}).GRPCStatus().Err()
	}
	return status.Error(codes.Unknown, err.Error())
}

// FromGRPC turns a gRPC status error into an *Error (for a client: the
// agent client). The kind comes from the mvm ErrorInfo detail when there is
// one, else from the status code. The message is the status message (no
// "rpc error: code = ..." prefix). The status stays reachable:
// status.FromError(FromGRPC(err)) is the original status. Errors that are not
// statuses, and errors that already have a kind, are returned as they are.
func FromGRPC(err error) error {
	if err == nil {
		return nil
	}
	var kd Kinded
	if errors.As(err, &kd) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	if st.Code() == codes.OK {
		return err
	}
	k, reason, found := detailsOf(st)
	if !found {
		k = kindOfCode[st.Code()]
	}
	return &Error{Kind: k, Reason: reason, Err: &remoteError{st: st}}
}

// detailsOf reads the kind and reason of st's mvm ErrorInfo, validating
// both (they may come from a hostile guest).
func detailsOf(st *status.Status) (Kind, string, bool) {
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.Domain != Domain {
			continue
		}
		k := Kind(strings.ToLower(info.Reason))
		if !k.Valid() {
			k = Unknown
		}
		return k, cleanReason(info.Metadata["reason"]), true
	}
	return Unknown, "", false
}

// cleanReason keeps a reason only if it is a short lower_snake word.
func cleanReason(r string) string {
	if len(r) > maxReason {
		return ""
	}
	for _, c := range r {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return ""
		}
	}
	return r
}

// remoteError is a status received from a peer: its message is the
// status's message, and it still answers status.FromError.
type remoteError struct{ st *status.Status }

func (r *remoteError) Error() string              { return r.st.Message() }
func (r *remoteError) GRPCStatus() *status.Status { return r.st }

// UnaryClientInterceptor converts the errors of unary calls with FromGRPC.
func UnaryClientInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return FromGRPC(invoker(ctx, method, req, reply, cc, opts...))
}

// StreamClientInterceptor converts the errors of streaming calls (opening
// the stream, and every send and receive) with FromGRPC.
func StreamClientInterceptor(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, FromGRPC(err)
	}
	return &clientStream{ClientStream: s}, nil
}

type clientStream struct{ grpc.ClientStream }

func (s *clientStream) SendMsg(m any) error { return fromGRPCKeepEOF(s.ClientStream.SendMsg(m)) }
func (s *clientStream) RecvMsg(m any) error { return fromGRPCKeepEOF(s.ClientStream.RecvMsg(m)) }
func (s *clientStream) CloseSend() error    { return FromGRPC(s.ClientStream.CloseSend()) }

// fromGRPCKeepEOF leaves io.EOF alone: it is the end of a stream, not a
// failure (callers compare it with ==).
func fromGRPCKeepEOF(err error) error {
	if err == io.EOF {
		return err
	}
	return FromGRPC(err)
}

// statusKind reads the kind of a gRPC status error that was not converted
// with FromGRPC (as FromGRPC would).
func statusKind(err error) (Kind, string, bool) {
	var gs interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &gs) {
		return Unknown, "", false
	}
	st := gs.GRPCStatus()
	if st == nil || st.Code() == codes.OK {
		return Unknown, "", false
	}
	if k, r, found := detailsOf(st); found {
		return k, r, true
	}
	return kindOfCode[st.Code()], "", true
}
