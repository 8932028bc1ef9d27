package errdefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestKindThroughWrapping(t *testing.T) {
	base := errors.New("no such thing")
	err := fmt.Errorf("outer: %w", fmt.Errorf("middle: %w", NotFound(base)))
	if !IsNotFound(err) || KindOf(err) != KindNotFound {
		t.Fatalf("kind lost through wrapping: %v", KindOf(err))
	}
	if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrRefused) {
		t.Fatal("errors.Is with the sentinels disagrees with the kind")
	}
	if !errors.Is(err, base) {
		t.Fatal("the wrapped error is not reachable")
	}
	if err.Error() != "outer: middle: no such thing" {
		t.Fatalf("message changed: %q", err.Error())
	}
	if IsRefused(err) || IsTimeout(err) {
		t.Fatal("an error has one kind")
	}
}

func TestOuterKindWins(t *testing.T) {
	err := Refused(fmt.Errorf("policy: %w", NotFound(errors.New("x"))))
	if KindOf(err) != KindRefused {
		t.Fatalf("got %v, want the outer kind", KindOf(err))
	}
}

func TestNilStaysNil(t *testing.T) {
	for _, k := range Kinds {
		if New(k, nil) != nil || WithReason(k, "x", nil) != nil {
			t.Fatalf("%v: nil became an error", k)
		}
	}
	if NotFound(nil) != nil || FromGRPC(nil) != nil || ToGRPC(nil) != nil {
		t.Fatal("nil became an error")
	}
	if KindOf(nil) != Unknown {
		t.Fatal("nil has a kind")
	}
}

func TestContextErrors(t *testing.T) {
	if KindOf(fmt.Errorf("wait: %w", context.DeadlineExceeded)) != KindTimeout {
		t.Fatal("deadline is not a timeout")
	}
	if KindOf(context.Canceled) != KindCanceled {
		t.Fatal("canceled is not canceled")
	}
	if KindOf(errors.New("plain")) != Unknown {
		t.Fatal("a plain error got a kind")
	}
}

func TestReason(t *testing.T) {
	err := fmt.Errorf("exec: %w", WithReason(KindNotFound, ReasonCommand, errors.New("ls: command not found")))
	if KindOf(err) != KindNotFound || ReasonOf(err) != ReasonCommand {
		t.Fatalf("got %v/%q", KindOf(err), ReasonOf(err))
	}
	if ReasonOf(errors.New("x")) != "" {
		t.Fatal("a plain error has a reason")
	}
}

func TestEveryKindHasACodeAndAName(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range Kinds {
		if !k.Valid() {
			t.Fatalf("%v not valid", k)
		}
		if _, ok := codeOf[k]; !ok {
			t.Fatalf("%v has no gRPC code", k)
		}
		if seen[k.String()] {
			t.Fatalf("%v: duplicate name", k)
		}
		seen[k.String()] = true
	}
	if Unknown.Valid() || Kind("bogus").Valid() {
		t.Fatal("Unknown or an invented kind is valid")
	}
}

// TestGRPCRoundTrip sends every kind through a status (as the agent does)
// and reads it back (as the agent client does): kind, reason and message
// survive, and the kind does not depend on the message text.
func TestGRPCRoundTrip(t *testing.T) {
	for _, k := range Kinds {
		orig := fmt.Errorf("ctx: %w", WithReason(k, "some_reason", errors.New("the message")))
		wire := ToGRPC(orig)
		st, ok := status.FromError(wire)
		if !ok || st.Code() != Code(k) {
			t.Fatalf("%v: status %v, want code %v", k, st.Code(), Code(k))
		}
		back := FromGRPC(wire)
		if KindOf(back) != k || ReasonOf(back) != "some_reason" {
			t.Fatalf("%v: came back as %v/%q", k, KindOf(back), ReasonOf(back))
		}
		if back.Error() != "ctx: the message" {
			t.Fatalf("%v: message %q", k, back.Error())
		}
		if s2, _ := status.FromError(back); s2.Code() != Code(k) {
			t.Fatalf("%v: the status is not reachable after FromGRPC", k)
		}
	}
}

// TestGRPCStatusMethod covers what grpc-go does with an error a handler
// returns: status.FromError on the (wrapped) error.
func TestGRPCStatusMethod(t *testing.T) {
	err := fmt.Errorf("open: %w", WithReason(KindFailedPrecondition, ReasonNotDir, errors.New("/etc/passwd: not a directory")))
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.FailedPrecondition {
		t.Fatalf("status %v %v", ok, st.Code())
	}
	back := FromGRPC(st.Err())
	if KindOf(back) != KindFailedPrecondition || ReasonOf(back) != ReasonNotDir {
		t.Fatalf("got %v/%q", KindOf(back), ReasonOf(back))
	}
	if IsRefused(back) {
		t.Fatal("a failed precondition must not read as a refusal")
	}
}

// TestFailedPreconditionIsNotRefused is the bug of issue 17: every
// FailedPrecondition status read as a policy refusal.
func TestFailedPreconditionIsNotRefused(t *testing.T) {
	noStdin := status.Error(codes.FailedPrecondition, "process p1 has no open stdin")
	if IsRefused(FromGRPC(noStdin)) {
		t.Fatal("no open stdin read as a refusal")
	}
	sealed := ToGRPC(WithReason(KindRefused, ReasonSealed, errors.New("refused by the image profile")))
	if !IsRefused(FromGRPC(sealed)) {
		t.Fatal("a refusal did not come back as one")
	}
}

func TestFromGRPCWithoutDetails(t *testing.T) {
	cases := map[codes.Code]Kind{
		codes.NotFound:           KindNotFound,
		codes.PermissionDenied:   KindPermissionDenied,
		codes.FailedPrecondition: KindFailedPrecondition,
		codes.ResourceExhausted:  KindLimitExceeded,
		codes.Unavailable:        KindTransport,
		codes.DeadlineExceeded:   KindTimeout,
		codes.Canceled:           KindCanceled,
	}
	for c, want := range cases {
		got := FromGRPC(status.Error(c, "m"))
		if KindOf(got) != want {
			t.Errorf("%v: got %v want %v", c, KindOf(got), want)
		}
		if got.Error() != "m" {
			t.Errorf("%v: message %q", c, got.Error())
		}
		if status.Code(got) != c {
			t.Errorf("%v: code became %v", c, status.Code(got))
		}
	}
}

// TestHostileDetails: the guest is hostile; a detail naming an invented
// kind or a reason that is not a short word is not believed.
func TestHostileDetails(t *testing.T) {
	st := status.New(codes.NotFound, "m")
	st, err := st.WithDetails(&errdetails.ErrorInfo{Domain: Domain, Reason: "ROOT_ACCESS",
		Metadata: map[string]string{"reason": strings.Repeat("a", 100)}})
	if err != nil {
		t.Fatal(err)
	}
	got := FromGRPC(st.Err())
	if KindOf(got) != Unknown || ReasonOf(got) != "" {
		t.Fatalf("got %v/%q", KindOf(got), ReasonOf(got))
	}
	st2, _ := status.New(codes.NotFound, "m").WithDetails(&errdetails.ErrorInfo{Domain: Domain, Reason: "REFUSED",
		Metadata: map[string]string{"reason": "bad\nreason"}})
	got = FromGRPC(st2.Err())
	if KindOf(got) != KindRefused || ReasonOf(got) != "" {
		t.Fatalf("got %v/%q", KindOf(got), ReasonOf(got))
	}
	// Another domain's ErrorInfo is not ours: fall back to the code.
	st3, _ := status.New(codes.NotFound, "m").WithDetails(&errdetails.ErrorInfo{Domain: "other", Reason: "REFUSED"})
	if KindOf(FromGRPC(st3.Err())) != KindNotFound {
		t.Fatal("a foreign detail was believed")
	}
}

func TestFromGRPCLeavesOthersAlone(t *testing.T) {
	plain := errors.New("plain")
	if FromGRPC(plain) != plain {
		t.Fatal("a plain error was changed")
	}
	kinded := Busy(errors.New("b"))
	if FromGRPC(kinded) != kinded {
		t.Fatal("a kinded error was changed")
	}
	if fromGRPCKeepEOF(io.EOF) != io.EOF {
		t.Fatal("EOF was changed")
	}
}

func TestToGRPCPlainAndContext(t *testing.T) {
	if status.Code(ToGRPC(errors.New("x"))) != codes.Unknown {
		t.Fatal("plain error")
	}
	if KindOf(FromGRPC(ToGRPC(context.DeadlineExceeded))) != KindTimeout {
		t.Fatal("deadline")
	}
	already := status.Error(codes.NotFound, "n")
	if ToGRPC(already) != already {
		t.Fatal("a status was changed")
	}
}

// TestRawStatusHasAKind: a status that did not pass through FromGRPC (a
// fake, a caller of the generated client) is read the same way.
func TestRawStatusHasAKind(t *testing.T) {
	raw := fmt.Errorf("exec: %w", status.Error(codes.NotFound, "missing: not found"))
	if KindOf(raw) != KindNotFound {
		t.Fatalf("got %v", KindOf(raw))
	}
	withDetails := ToGRPC(WithReason(KindRefused, ReasonSealed, errors.New("sealed")))
	if KindOf(withDetails) != KindRefused || ReasonOf(withDetails) != ReasonSealed {
		t.Fatalf("got %v/%q", KindOf(withDetails), ReasonOf(withDetails))
	}
	if KindOf(status.Error(codes.FailedPrecondition, "no open stdin")) == KindRefused {
		t.Fatal("a bare FailedPrecondition read as a refusal")
	}
}

// fsLike is a foreign error type that knows its kind (as agentapi.FsError).
type fsLike struct{}

func (fsLike) Error() string           { return "x: not a directory" }
func (fsLike) ErrKind() (Kind, string) { return KindFailedPrecondition, ReasonNotDir }
func (e fsLike) Is(target error) bool  { return MatchSentinel(KindFailedPrecondition, target) }

func TestForeignKinded(t *testing.T) {
	err := fmt.Errorf("ls: %w", fsLike{})
	if KindOf(err) != KindFailedPrecondition || ReasonOf(err) != ReasonNotDir || !errors.Is(err, ErrFailedPrecondition) {
		t.Fatal("a foreign Kinded is not seen")
	}
	back := FromGRPC(ToGRPC(err))
	if KindOf(back) != KindFailedPrecondition || ReasonOf(back) != ReasonNotDir || back.Error() != "ls: x: not a directory" {
		t.Fatalf("round trip: %v/%q %q", KindOf(back), ReasonOf(back), back)
	}
}
