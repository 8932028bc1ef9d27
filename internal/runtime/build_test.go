package runtime

import (
	"errors"
	"fmt"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/manifest"
)

// TestImageErrorKinds: naming something wrong is an invalid argument (exit
// 2 in the CLI, as before the one error model); other failures keep their
// kind or stay unclassified.
func TestImageErrorKinds(t *testing.T) {
	bad := []error{
		&image.UnknownTemplateError{Name: "pyhton"},
		fmt.Errorf("build: %w", &image.UnknownPackageError{Suite: "bookworm", Packages: []string{"nope"}}),
		&manifest.Error{File: "mvm.toml", Key: "x", Msg: "unknown key"},
		manifest.ErrorList{{File: "mvm.toml", Msg: "a"}},
		fmt.Errorf("%w %q", image.ErrNoImage, "abcd"),
	}
	for _, err := range bad {
		if got := imageError(err); !errdefs.IsInvalidArgument(got) || got.Error() != err.Error() {
			t.Errorf("%v: %v (%v)", err, got, errdefs.KindOf(got))
		}
	}
	other := errors.New("mkfs.ext4 failed")
	if imageError(other) != other {
		t.Error("an unrelated failure got a kind")
	}
	kinded := errdefs.Canceled(errors.New("interrupted"))
	if imageError(kinded) != kinded {
		t.Error("a kinded error was re-kinded")
	}
	if imageError(nil) != nil {
		t.Error("nil became an error")
	}
}
