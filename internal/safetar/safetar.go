// Package safetar writes a file or a tree as a tar stream and extracts such
// a stream from a party that is not trusted, through os.Root.
//
// Extract gives the stream exactly one name to fill: dir/name, chosen by the
// caller, never by the stream. Every member is written below a fresh
// staging directory inside dir, on an os.Root (so no member can reach
// outside it by construction), without ever following a symlink: each
// directory is entered with Lstat and OpenRoot, files are created with
// O_EXCL, modes and times are set on open descriptors. Only a stream that
// was read to its end without an error is moved into place; a failed
// extraction removes the staging directory, that is everything it created
// and nothing else. Memory is bounded by the depth of the tree, not by the
// number of members.
package safetar

import (
	"errors"
	"fmt"
	"io/fs"
)

const (
	// MaxNameBytes caps every member name and symlink target.
	MaxNameBytes = 4096
	// DefaultMaxMembers caps the members of one stream unless
	// Options.MaxMembers says otherwise.
	DefaultMaxMembers = 1 << 20
	// MaxDepth caps how many directories deep a member may be: each level
	// being written holds one open directory.
	MaxDepth = 256
	// stagingPrefix names the staging directory inside the destination.
	stagingPrefix = ".mvm-cp-"
)

// Errors an extraction can wrap (besides operating system errors such as
// syscall.ENOTDIR): test them with errors.Is.
var (
	// ErrUnsafe: a member the extractor refuses (absolute name, "..",
	// through a symlink, a second top-level name, a sparse file).
	ErrUnsafe = errors.New("unsafe archive member")
	// ErrTooLarge: the stream exceeds a cap (bytes, members, depth).
	ErrTooLarge = errors.New("archive over a limit")
)

// Error is a failed write or extraction: Path is the member (or host path)
// concerned, Detail says what happened, Err is ErrUnsafe, ErrTooLarge or an
// operating system error.
type Error struct {
	Path   string
	Detail string
	Err    error
}

func (e *Error) Error() string {
	msg := e.Detail
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	if e.Path == "" {
		return msg
	}
	return e.Path + ": " + msg
}

func (e *Error) Unwrap() error { return e.Err }

func errorf(kind error, p, format string, args ...any) *Error {
	return &Error{Path: p, Detail: fmt.Sprintf(format, args...), Err: kind}
}

// osErr attaches the member path to an operating system error.
func osErr(err error, p string) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return &Error{Path: p, Err: err}
}

// Stats counts what a stream held.
type Stats struct {
	Files, Dirs, Symlinks, Skipped, Bytes int64
	// Root is the path the top-level member took (extraction only).
	Root string
}

// Options bound and shape an extraction.
type Options struct {
	// Name is what the top-level member is called in the destination when
	// the destination is an existing directory. Whatever the stream calls
	// its top-level member, it lands there. Empty means the stream's own
	// name, for a stream from a trusted party only (the guest agent
	// receiving from the host).
	Name string
	// MaxBytes caps the file bytes extracted (0 = no cap).
	MaxBytes int64
	// MaxMembers caps the members (0 = DefaultMaxMembers).
	MaxMembers int
	// KeepModes keeps modes as the stream gives them, setuid, setgid,
	// sticky and group/other write included (for a trusted stream). By
	// default they are clamped: no special bits, no group or other write,
	// and directories stay rwx for their owner.
	KeepModes bool
}
