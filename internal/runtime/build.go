package runtime

import (
	"errors"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/manifest"
)

// imageError gives an error of image resolution or build its kind: the
// caller named something wrong (a bad manifest, an unknown template,
// package or image) is an invalid argument; other failures keep theirs.
func imageError(err error) error {
	if err == nil || errdefs.KindOf(err) != errdefs.Unknown {
		return err
	}
	var ut *image.UnknownTemplateError
	var up *image.UnknownPackageError
	var me *manifest.Error
	var ml manifest.ErrorList
	if errors.As(err, &ut) || errors.As(err, &up) || errors.As(err, &me) || errors.As(err, &ml) ||
		errors.Is(err, image.ErrNoImage) {
		return errdefs.InvalidArgument(err)
	}
	return err
}
