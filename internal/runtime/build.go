package runtime

import (
	"context"
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

// Build builds the image of a build directory (dir with mvm.toml) or a
// bare template, or finds it in the cache. progress receives build events.
// Naming something wrong is an invalid argument.
func (r *Runtime) Build(ctx context.Context, dir, template string, o image.BuildOptions, progress func(image.Event)) (*image.Artifact, error) {
	a, err := image.Build(ctx, r.Dirs, dir, template, o, progress)
	if err != nil {
		return nil, imageError(err)
	}
	return a, nil
}

// Images lists the built images, never nil.
func (r *Runtime) Images() ([]*image.Artifact, error) {
	arts, err := image.ListArtifacts(r.Dirs)
	if arts == nil {
		arts = []*image.Artifact{}
	}
	return arts, err
}

// RemoveImage removes a built image by digest or unique digest prefix. It
// refuses (failed precondition) an image a sandbox of this state directory
// was booted from, in any state: a stopped one can still be inspected.
// When the sandboxes cannot be listed, the image is kept. Its ready
// snapshots go with it.
func (r *Runtime) RemoveImage(idOrPrefix string) (*image.Artifact, error) {
	a, err := image.RemoveArtifact(r.Dirs, idOrPrefix, r.imageInUse)
	if errors.Is(err, image.ErrArtifactInUse) {
		return nil, errdefs.FailedPrecondition(err)
	}
	if err == nil {
		r.dropReadyOf(a.Digest) // booted from the image, useless without it
	}
	return a, err
}

func (r *Runtime) imageInUse(digest string) bool {
	sts, err := r.List(true)
	if err != nil {
		return true
	}
	for _, st := range sts {
		if st.Image.Digest == digest {
			return true
		}
	}
	return false
}

// Pull resolves an OCI image reference on its registry and makes (or finds
// in the cache) its sandbox image. layers receives per-layer progress.
func (r *Runtime) Pull(ctx context.Context, ref string, o image.PullOptions, progress func(image.Event), layers func(image.PullEvent)) (*image.Artifact, error) {
	a, err := image.Pull(ctx, r.Dirs, ref, o, progress, layers)
	if err != nil {
		return nil, imageError(err)
	}
	return a, nil
}

// Import makes the sandbox image of a `docker save` archive or an OCI
// image layout (tarball or directory).
func (r *Runtime) Import(ctx context.Context, file string, progress func(image.Event), layers func(image.PullEvent)) (*image.Artifact, error) {
	a, err := image.Import(ctx, r.Dirs, file, progress, layers)
	if err != nil {
		return nil, imageError(err)
	}
	return a, nil
}
