package agentapi

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"syscall"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/safetar"
	"google.golang.org/grpc/status"
)

// The file error taxonomy: kinds, the typed error, and how OS errors and
// agent statuses map to kinds.

// FsKind is the typed reason of a failed file operation.
type FsKind = pb.FsError_Kind

// File error kinds, re-exported for callers that do not import agentpb.
const (
	FsUnknown     = pb.FsError_UNKNOWN
	FsNotFound    = pb.FsError_NOT_FOUND
	FsPermission  = pb.FsError_PERMISSION_DENIED
	FsExists      = pb.FsError_EXISTS
	FsNotDir      = pb.FsError_NOT_A_DIRECTORY
	FsIsDir       = pb.FsError_IS_A_DIRECTORY
	FsNotEmpty    = pb.FsError_NOT_EMPTY
	FsTooLarge    = pb.FsError_TOO_LARGE
	FsInvalidPath = pb.FsError_INVALID_PATH
	FsUnsafe      = pb.FsError_UNSAFE
	FsRefused     = pb.FsError_REFUSED
	sealedRefusal = "refused by the image profile \"sealed\": it allows reading files (read, ls, stat, cp out) but not changing them"
)

var kindText = map[FsKind]string{
	FsNotFound:    "no such file or directory",
	FsPermission:  "permission denied",
	FsExists:      "already exists",
	FsNotDir:      "not a directory",
	FsIsDir:       "is a directory",
	FsNotEmpty:    "directory not empty",
	FsTooLarge:    "too large",
	FsInvalidPath: "invalid path",
	FsUnsafe:      "unsafe path",
	FsRefused:     "refused",
}

// FsError is a typed file error. On the agent it becomes a gRPC status
// with a pb.FsError detail; on the host it comes from the local extractor.
type FsError struct {
	Kind   FsKind
	Path   string
	Detail string // optional, replaces the generic text of Kind
	Err    error
}

func (e *FsError) Error() string {
	msg := e.Detail
	if msg == "" {
		msg = kindText[e.Kind]
		if msg == "" && e.Err != nil {
			msg = e.Err.Error()
		}
	}
	if e.Path == "" {
		return msg
	}
	return e.Path + ": " + msg
}

func (e *FsError) Unwrap() error { return e.Err }

// GRPCStatus makes an FsError travel as a status with its kind attached
// (the one error model: errdefs details).
func (e *FsError) GRPCStatus() *status.Status {
	k, r := e.ErrKind()
	return (&errdefs.Error{Kind: k, Reason: r, Err: e}).GRPCStatus()
}

// fsErrorf builds a typed error with a specific message.
func fsErrorf(kind FsKind, p string, format string, args ...any) *FsError {
	return &FsError{Kind: kind, Path: p, Detail: fmt.Sprintf(format, args...)}
}

// FsErr turns an OS error about p into a typed FsError (nil stays nil,
// errors that already carry a kind are returned as they are).
func FsErr(err error, p string) error {
	if err == nil {
		return nil
	}
	var fe *FsError
	if errors.As(err, &fe) {
		return err
	}
	var te *safetar.Error
	if errors.As(err, &te) {
		return fromSafetar(te, p)
	}
	if _, ok := status.FromError(err); ok && !isErrno(err) {
		return err
	}
	kind := FsUnknown
	switch {
	case errors.Is(err, syscall.ENOENT):
		kind = FsNotFound
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		kind = FsPermission
	case errors.Is(err, syscall.EEXIST):
		kind = FsExists
	case errors.Is(err, syscall.ENOTDIR):
		kind = FsNotDir
	case errors.Is(err, syscall.EISDIR):
		kind = FsIsDir
	case errors.Is(err, syscall.ENOTEMPTY):
		kind = FsNotEmpty
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EFBIG), errors.Is(err, syscall.EDQUOT):
		return &FsError{Kind: FsTooLarge, Path: p, Detail: "no space left (or file too large)", Err: err}
	case errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ELOOP):
		kind = FsInvalidPath
	}
	if kind == FsUnknown {
		var pe *fs.PathError
		msg := err.Error()
		if errors.As(err, &pe) {
			msg = pe.Op + ": " + pe.Err.Error()
		}
		return &FsError{Kind: kind, Path: p, Detail: msg, Err: err}
	}
	return &FsError{Kind: kind, Path: p, Err: err}
}

// fromSafetar gives an error of the tar writer or extractor its kind.
func fromSafetar(te *safetar.Error, p string) *FsError {
	out := &FsError{Path: te.Path, Detail: te.Detail, Err: te.Err}
	if out.Path == "" {
		out.Path = p
	}
	switch {
	case errors.Is(te.Err, safetar.ErrUnsafe):
		out.Kind = FsUnsafe
	case errors.Is(te.Err, safetar.ErrTooLarge):
		out.Kind = FsTooLarge
	default:
		if fe, ok := FsErr(te.Err, out.Path).(*FsError); ok {
			out.Kind = fe.Kind
			if out.Detail == "" {
				out.Detail = fe.Detail
			}
		}
	}
	if out.Detail == "" && out.Kind == FsUnknown && te.Err != nil {
		out.Detail = te.Err.Error()
	}
	return out
}

func isErrno(err error) bool {
	var errno syscall.Errno
	return errors.As(err, &errno)
}

// KindOf reports the file error kind of err: from a local FsError, or from
// the kind and reason of the one error model (an agent status).
func KindOf(err error) FsKind {
	if err == nil {
		return FsUnknown
	}
	var fe *FsError
	if errors.As(err, &fe) {
		return fe.Kind
	}
	var te *safetar.Error
	if errors.As(err, &te) {
		return fromSafetar(te, "").Kind
	}
	k, r := errdefs.KindOf(err), errdefs.ReasonOf(err)
	for fk, m := range fsKinds {
		if m.kind == k && (m.reason == r || k == errdefs.KindNotFound) {
			return fk
		}
	}
	return FsUnknown
}

// RefusedSealed is the error a sealed image gives for a file change.
func RefusedSealed(p string) error {
	return &FsError{Kind: FsRefused, Path: p, Detail: sealedRefusal}
}

// CleanGuestPath validates a guest path: absolute, no NUL, bounded. It
// returns the cleaned path.
func CleanGuestPath(p string) (string, error) {
	switch {
	case p == "":
		return "", fsErrorf(FsInvalidPath, p, "empty path")
	case len(p) > MaxPathBytes:
		return "", fsErrorf(FsInvalidPath, p[:64]+"...", "path longer than %d bytes", MaxPathBytes)
	case strings.IndexByte(p, 0) >= 0:
		return "", fsErrorf(FsInvalidPath, "", "path contains a NUL byte")
	case !strings.HasPrefix(p, "/"):
		return "", fsErrorf(FsInvalidPath, p, "guest paths must be absolute (start with /)")
	}
	return path.Clean(p), nil
}
