// Package errdefs is the one error model of mvm: a small set of kinds that
// every layer (guest agent, agent client, runtime, CLI, MCP, SDKs) shares.
//
// An error gets a kind where it is born (errdefs.NotFound(err)); callers
// wrap it freely with fmt.Errorf("...: %w", err) and ask for the kind with
// errdefs.IsNotFound(err) or errdefs.KindOf(err), which look through the
// wrapping. Across the guest protocol a kind travels in the gRPC status
// details (google.rpc.ErrorInfo), never in the message text: see ToGRPC and
// FromGRPC.
//
// Every surface maps kinds in one place: the CLI to exit codes
// (internal/cli/errors.go), MCP to tool errors, the SDKs to typed errors.
package errdefs

import (
	"context"
	"errors"
	"fmt"
)

// Kind classifies why an operation failed. Its string is stable: it is the
// "kind" of JSON errors and of the gRPC error details.
type Kind string

// The kinds. Unknown is the zero value: an error nobody classified.
const (
	Unknown Kind = ""
	// KindNotFound: the named thing (sandbox, command, path, process
	// handle, image) does not exist.
	KindNotFound Kind = "not_found"
	// KindAlreadyExists: the thing to create exists already (a conflict).
	KindAlreadyExists Kind = "already_exists"
	// KindInvalidArgument: the request itself is wrong; retrying it as is
	// cannot succeed.
	KindInvalidArgument Kind = "invalid_argument"
	// KindRefused: a policy refused the operation (the image profile, the
	// run profile, admission, the network policy, a safety rule).
	KindRefused Kind = "refused"
	// KindPermissionDenied: the guest's operating system denied it
	// (EACCES, EPERM, a read-only file system, a command not executable).
	KindPermissionDenied Kind = "permission_denied"
	// KindFailedPrecondition: the current state does not allow it (not a
	// directory, directory not empty, no open stdin, sandbox not running).
	KindFailedPrecondition Kind = "failed_precondition"
	// KindLimitExceeded: a size or count cap was hit, or no space is left.
	KindLimitExceeded Kind = "limit_exceeded"
	// KindTimeout: a deadline passed.
	KindTimeout Kind = "timeout"
	// KindBusy: something else holds the resource; retry later.
	KindBusy Kind = "busy"
	// KindGuest: the guest failed (boot, agent, a process it could not
	// start for a reason of its own).
	KindGuest Kind = "guest"
	// KindTransport: the channel to the supervisor or the agent failed.
	KindTransport Kind = "transport"
	// KindUnavailable: a prerequisite is missing on the host (accelerator,
	// VMM binary, kernel, image cache) or a service is not there.
	KindUnavailable Kind = "unavailable"
	// KindCanceled: the caller gave up (interrupt, context canceled).
	KindCanceled Kind = "canceled"
)

// Kinds lists every kind but Unknown, in a stable order.
var Kinds = []Kind{
	KindNotFound, KindAlreadyExists, KindInvalidArgument, KindRefused,
	KindPermissionDenied, KindFailedPrecondition, KindLimitExceeded,
	KindTimeout, KindBusy, KindGuest, KindTransport, KindUnavailable,
	KindCanceled,
}

// Valid reports whether k is one of Kinds.
func (k Kind) Valid() bool {
	for _, x := range Kinds {
		if x == k {
			return true
		}
	}
	return false
}

// String is the kind's stable name ("unknown" for Unknown).
func (k Kind) String() string {
	if k == Unknown {
		return "unknown"
	}
	return string(k)
}

// Reasons refine a kind where a surface must tell cases apart (the CLI's
// exit codes do). They are short lower_snake words; a reason is optional.
const (
	ReasonSandbox    = "sandbox"     // NotFound: no such sandbox
	ReasonCommand    = "command"     // NotFound/PermissionDenied/Timeout: the command to run
	ReasonPath       = "path"        // NotFound: a guest or host path
	ReasonProcess    = "process"     // NotFound: a background process handle
	ReasonNotDir     = "not_dir"     // FailedPrecondition: not a directory
	ReasonIsDir      = "is_dir"      // FailedPrecondition: is a directory
	ReasonNotEmpty   = "not_empty"   // FailedPrecondition: directory not empty
	ReasonUnsafe     = "unsafe"      // Refused: an unsafe archive member or symlink
	ReasonTooLarge   = "too_large"   // LimitExceeded: a file or copy too large, no space left
	ReasonSealed     = "sealed"      // Refused: the sealed image profile
	ReasonPolicy     = "policy"      // Refused: the run profile or admission
	ReasonNoStdin    = "no_stdin"    // FailedPrecondition: the process has no open stdin
	ReasonNotRunning = "not_running" // FailedPrecondition: the sandbox is not running
	ReasonNotReady   = "not_ready"   // Timeout: the sandbox did not become ready
	ReasonFailed     = "failed"      // Guest: the sandbox failed (boot, VMM died)
)

// Kinded is implemented by errors that know their kind: *Error, and error
// types of other packages (the agent API's file errors) that want KindOf,
// ReasonOf and the gRPC conversion to see their kind.
type Kinded interface {
	error
	ErrKind() (Kind, string)
}

// MatchSentinel reports whether target is the sentinel of kind k; a Kinded
// type calls it from its Is method so that errors.Is(err, ErrNotFound)
// works for it too.
func MatchSentinel(k Kind, target error) bool {
	s, ok := target.(*sentinel)
	return ok && s.kind == k
}

// Error is an error with a kind and an optional reason. Its message is the
// message of the error it wraps.
type Error struct {
	Kind   Kind
	Reason string
	Err    error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Kind.String()
	}
	return e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// ErrKind makes *Error a Kinded.
func (e *Error) ErrKind() (Kind, string) { return e.Kind, e.Reason }

// Is makes errors.Is(err, errdefs.ErrNotFound) (and the other sentinels)
// true for every error of that kind.
func (e *Error) Is(target error) bool { return MatchSentinel(e.Kind, target) }

// sentinel is the type of the Err* values: comparable kinds for errors.Is.
type sentinel struct{ kind Kind }

func (s *sentinel) Error() string { return s.kind.String() }

// Sentinels, one per kind: errors.Is(err, errdefs.ErrNotFound) is
// IsNotFound(err).
var (
	ErrNotFound           error = &sentinel{KindNotFound}
	ErrAlreadyExists      error = &sentinel{KindAlreadyExists}
	ErrInvalidArgument    error = &sentinel{KindInvalidArgument}
	ErrRefused            error = &sentinel{KindRefused}
	ErrPermissionDenied   error = &sentinel{KindPermissionDenied}
	ErrFailedPrecondition error = &sentinel{KindFailedPrecondition}
	ErrLimitExceeded      error = &sentinel{KindLimitExceeded}
	ErrTimeout            error = &sentinel{KindTimeout}
	ErrBusy               error = &sentinel{KindBusy}
	ErrGuest              error = &sentinel{KindGuest}
	ErrTransport          error = &sentinel{KindTransport}
	ErrUnavailable        error = &sentinel{KindUnavailable}
	ErrCanceled           error = &sentinel{KindCanceled}
)

// New gives err the kind k (nil stays nil). An error that already has a
// kind is wrapped again: the outer kind wins.
func New(k Kind, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: k, Err: err}
}

// Errorf is New(k, fmt.Errorf(format, args...)).
func Errorf(k Kind, format string, args ...any) error {
	return &Error{Kind: k, Err: fmt.Errorf(format, args...)}
}

// WithReason gives err the kind k and the reason r.
func WithReason(k Kind, r string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: k, Reason: r, Err: err}
}

// KindOf reports the kind of err: that of the outermost Kinded error in its
// chain; else that of a gRPC status in it (as FromGRPC reads it); else, context.DeadlineExceeded is a timeout and context.Canceled a
// cancellation; else Unknown.
func KindOf(err error) Kind {
	if err == nil {
		return Unknown
	}
	var e Kinded
	if errors.As(err, &e) {
		k, _ := e.ErrKind()
		return k
	}
	if k, _, ok := statusKind(err); ok {
		return k
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return KindTimeout
	case errors.Is(err, context.Canceled):
		return KindCanceled
	}
	return Unknown
}

// ReasonOf reports the reason of the outermost Kinded error in err's chain.
func ReasonOf(err error) string {
	var e Kinded
	if errors.As(err, &e) {
		_, r := e.ErrKind()
		return r
	}
	if _, r, ok := statusKind(err); ok {
		return r
	}
	return ""
}

// Constructors: each gives err its kind (nil stays nil).

func NotFound(err error) error           { return New(KindNotFound, err) }
func AlreadyExists(err error) error      { return New(KindAlreadyExists, err) }
func InvalidArgument(err error) error    { return New(KindInvalidArgument, err) }
func Refused(err error) error            { return New(KindRefused, err) }
func PermissionDenied(err error) error   { return New(KindPermissionDenied, err) }
func FailedPrecondition(err error) error { return New(KindFailedPrecondition, err) }
func LimitExceeded(err error) error      { return New(KindLimitExceeded, err) }
func Timeout(err error) error            { return New(KindTimeout, err) }
func Busy(err error) error               { return New(KindBusy, err) }
func Guest(err error) error              { return New(KindGuest, err) }
func Transport(err error) error          { return New(KindTransport, err) }
func Unavailable(err error) error        { return New(KindUnavailable, err) }
func Canceled(err error) error           { return New(KindCanceled, err) }

// Predicates: each reports whether KindOf(err) is its kind.

func IsNotFound(err error) bool           { return KindOf(err) == KindNotFound }
func IsAlreadyExists(err error) bool      { return KindOf(err) == KindAlreadyExists }
func IsInvalidArgument(err error) bool    { return KindOf(err) == KindInvalidArgument }
func IsRefused(err error) bool            { return KindOf(err) == KindRefused }
func IsPermissionDenied(err error) bool   { return KindOf(err) == KindPermissionDenied }
func IsFailedPrecondition(err error) bool { return KindOf(err) == KindFailedPrecondition }
func IsLimitExceeded(err error) bool      { return KindOf(err) == KindLimitExceeded }
func IsTimeout(err error) bool            { return KindOf(err) == KindTimeout }
func IsBusy(err error) bool               { return KindOf(err) == KindBusy }
func IsGuest(err error) bool              { return KindOf(err) == KindGuest }
func IsTransport(err error) bool          { return KindOf(err) == KindTransport }
func IsUnavailable(err error) bool        { return KindOf(err) == KindUnavailable }
func IsCanceled(err error) bool           { return KindOf(err) == KindCanceled }
