package agentapi

import "github.com/mvm-sandbox/mvm/internal/errdefs"

// fsKinds maps a file error kind to the one error model (kind, reason).
var fsKinds = map[FsKind]struct {
	kind   errdefs.Kind
	reason string
}{
	FsNotFound:    {errdefs.KindNotFound, errdefs.ReasonPath},
	FsPermission:  {errdefs.KindPermissionDenied, ""},
	FsExists:      {errdefs.KindAlreadyExists, ""},
	FsNotDir:      {errdefs.KindFailedPrecondition, errdefs.ReasonNotDir},
	FsIsDir:       {errdefs.KindFailedPrecondition, errdefs.ReasonIsDir},
	FsNotEmpty:    {errdefs.KindFailedPrecondition, errdefs.ReasonNotEmpty},
	FsTooLarge:    {errdefs.KindLimitExceeded, errdefs.ReasonTooLarge},
	FsInvalidPath: {errdefs.KindInvalidArgument, errdefs.ReasonPath},
	FsUnsafe:      {errdefs.KindRefused, errdefs.ReasonUnsafe},
	FsRefused:     {errdefs.KindRefused, errdefs.ReasonSealed},
}

// ErrKind places a file error in the one error model: errdefs.KindOf and
// the gRPC conversion see its kind. A file error of no known kind is a
// failure of the guest.
func (e *FsError) ErrKind() (errdefs.Kind, string) {
	if k, ok := fsKinds[e.Kind]; ok {
		return k.kind, k.reason
	}
	return errdefs.KindGuest, ""
}

// Is makes errors.Is(err, errdefs.ErrNotFound) (and the other sentinels)
// true for a file error of that kind.
func (e *FsError) Is(target error) bool {
	k, _ := e.ErrKind()
	return errdefs.MatchSentinel(k, target)
}
