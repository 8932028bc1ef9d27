package runtime

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/secret"
	"github.com/mvm-sandbox/mvm/internal/volume"
)

// ErrAttach reports a host directory, volume or secret that cannot be
// given to a sandbox.
// It is an invalid argument (exit 2); a volume held by another sandbox is
// also busy (exit 1).
var ErrAttach = errdefs.New(errdefs.KindInvalidArgument, errors.New("cannot attach"))

// ResolveAttachments checks every -v and --secret of o before anything is
// created: host directories pass CheckHostDir, volumes and secrets exist.
// It reads no secret value.
func (r *Runtime) ResolveAttachments(o UpOptions) (*sandbox.Attachments, error) {
	a := &sandbox.Attachments{Mounts: []plan.Mount{}, Volumes: []plan.VolumeMount{}, Secrets: []secret.Ref{}}
	home, _ := os.UserHomeDir()
	vs := r.Volumes()
	for _, m := range o.Mounts {
		// Say where a refused mount came from: the operator's -v or
		// the manifest's [[mount]].
		from := ""
		if m.Origin == volume.OriginManifest {
			from = "the image's manifest (mvm.toml) [[mount]]: "
		}
		if err := volume.CheckGuestPath(m.Target); err != nil {
			return nil, fmt.Errorf("%w: %s%v", ErrAttach, from, err)
		}
		if m.Volume {
			if _, err := vs.Inspect(m.Source); err != nil {
				return nil, fmt.Errorf("%w: %s%v", ErrAttach, from, err)
			}
			a.Volumes = append(a.Volumes, plan.VolumeMount{Name: m.Source, GuestPath: m.Target, ReadOnly: m.ReadOnly, Origin: m.Origin})
			continue
		}
		p, err := volume.CheckHostDir(m.Source, home, r.Dirs.Data, r.Dirs.State, r.Dirs.Cache)
		if err != nil {
			return nil, fmt.Errorf("%w: %s%v", ErrAttach, from, err)
		}
		a.Mounts = append(a.Mounts, plan.Mount{HostPath: p, GuestPath: m.Target, ReadOnly: m.ReadOnly, Origin: m.Origin})
	}
	if len(a.Mounts) > 0 {
		if err := qemu.ShareSupport(); err != nil {
			return nil, errdefs.New(errdefs.KindUnavailable, err)
		}
	}
	if err := secret.CheckRefs(o.Secrets); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAttach, err)
	}
	ss := r.Secrets()
	for _, ref := range o.Secrets {
		if err := ss.Check(ref.Name); err != nil {
			if ref.Origin == volume.OriginManifest {
				return nil, fmt.Errorf("%w: the image's manifest (mvm.toml) [secrets]: %v", ErrAttach, err)
			}
			return nil, fmt.Errorf("%w: %v", ErrAttach, err)
		}
		if ref.Env != "" {
			if _, clash := o.Env[ref.Env]; clash {
				return nil, fmt.Errorf("%w: %s is both an -e variable and a secret's target", ErrAttach, ref.Env)
			}
		}
		a.Secrets = append(a.Secrets, ref)
	}
	return a, nil
}

// withAttachments puts a's host directories, volumes and secret names
// into the plan input.
func withAttachments(in *plan.Input, a *sandbox.Attachments, o UpOptions) {
	in.Mounts, in.Volumes, in.Secrets, in.AllowRWMount = a.Mounts, a.Volumes, planSecrets(a), o.AllowRWMount
	// The consent is recorded only when it was used.
	for _, m := range a.Mounts {
		in.AllowManifestMounts = in.AllowManifestMounts || (o.AllowManifestMounts && m.Origin == volume.OriginManifest)
	}
	for _, v := range a.Volumes {
		in.AllowManifestMounts = in.AllowManifestMounts || (o.AllowManifestMounts && v.Origin == volume.OriginManifest)
	}
	for _, s := range a.Secrets {
		in.AllowManifestSecrets = in.AllowManifestSecrets || (o.AllowManifestSecrets && s.Origin != "")
	}
}

func planSecrets(a *sandbox.Attachments) []plan.SecretRef {
	out := make([]plan.SecretRef, 0, len(a.Secrets))
	for _, s := range a.Secrets {
		out = append(out, plan.SecretRef{Name: s.Name, Target: s.Target(), Origin: s.Origin})
	}
	return out
}

// volumeSerial names the i-th volume's disk to the guest.
func volumeSerial(i int) string { return fmt.Sprintf("mvmvol%d", i) }

// shareTag names the i-th host directory's virtiofs tag.
func shareTag(i int) string { return fmt.Sprintf("mvmfs%d", i) }

// maxMountsArg bounds mvm.mounts= so the kernel command line (2 KiB on
// x86) keeps room for everything else.
const maxMountsArg = 1200

// vmAttachments returns the disks, shares and kernel arguments that give
// the guest a's directories and volumes.
func (r *Runtime) vmAttachments(a *sandbox.Attachments) ([]backend.Disk, []backend.Share, string, error) {
	type gm struct {
		Kind     string `json:"k"`
		Source   string `json:"s"`
		Target   string `json:"t"`
		ReadOnly bool   `json:"ro,omitempty"`
	}
	var (
		disks  []backend.Disk
		shares []backend.Share
		ms     []gm
	)
	for i, m := range a.Mounts {
		shares = append(shares, backend.Share{Tag: shareTag(i), HostPath: m.HostPath, ReadOnly: m.ReadOnly})
		ms = append(ms, gm{"virtiofs", shareTag(i), m.GuestPath, m.ReadOnly})
	}
	vs := r.Volumes()
	for i, v := range a.Volumes {
		disks = append(disks, backend.Disk{Path: vs.ImagePath(v.Name), ReadOnly: v.ReadOnly, Serial: volumeSerial(i)})
		ms = append(ms, gm{"ext4", volumeSerial(i), v.GuestPath, v.ReadOnly})
	}
	if len(ms) == 0 {
		return nil, nil, "", nil
	}
	b, err := json.Marshal(ms)
	if err != nil {
		return nil, nil, "", err
	}
	arg := "mvm.mounts=" + base64.RawURLEncoding.EncodeToString(b)
	if len(arg) > maxMountsArg {
		return nil, nil, "", fmt.Errorf("%w: the guest paths of %d mounts are too long for the kernel command line; use fewer or shorter guest paths", ErrAttach, len(ms))
	}
	if len(shares) > 0 {
		arg += " mvm.virtiofs=1"
	}
	return disks, shares, arg, nil
}

// lockVolumes takes each volume's attachment lock; the supervisor inherits
// the descriptors and holds them for the sandbox's life.
func (r *Runtime) lockVolumes(a *sandbox.Attachments) ([]*os.File, error) {
	vs := r.Volumes()
	var files []*os.File
	for _, v := range a.Volumes {
		l, err := vs.Acquire(v.Name, v.ReadOnly)
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			if errors.Is(err, volume.ErrInUse) {
				if holders := r.VolumeHolders(v.Name); len(holders) > 0 {
					err = fmt.Errorf("%w (held by %v)", err, holders)
				}
			}
			if errors.Is(err, volume.ErrInUse) {
				return nil, errdefs.New(errdefs.KindBusy, fmt.Errorf("%w: %w", ErrAttach, err))
			}
			return nil, fmt.Errorf("%w: %w", ErrAttach, err)
		}
		files = append(files, l.File)
	}
	return files, nil
}

// VolumeHolders names the active sandboxes that have a volume attached.
func (r *Runtime) VolumeHolders(name string) []string {
	out := []string{}
	sts, _ := r.List(true)
	for _, st := range sts {
		if !sandbox.Active(st.Status) || st.Attachments == nil {
			continue
		}
		for _, v := range st.Attachments.Volumes {
			if v.Name == name {
				out = append(out, st.Name)
			}
		}
	}
	sort.Strings(out)
	return out
}

// Volumes is the volume store of this runtime's data directory.
func (r *Runtime) Volumes() *volume.Store { return volume.Open(r.Dirs.Data) }

// Secrets is the secret store of this runtime's data directory.
func (r *Runtime) Secrets() *secret.Store { return secret.Open(r.Dirs.Data) }

// SecretInUseError refuses to change or remove a secret that active
// sandboxes were given.
type SecretInUseError struct {
	Name    string
	Holders []string
	Verb    string // "replace" or "remove"
}

func (e *SecretInUseError) Error() string {
	return fmt.Sprintf("secret %s is in use by %s; cannot %s it until they are down (`mvmctl down %s`)",
		e.Name, strings.Join(e.Holders, ", "), e.Verb, strings.Join(e.Holders, " "))
}

// SetSecret stores a secret's value, unless an active sandbox holds it.
func (r *Runtime) SetSecret(name string, value []byte, now time.Time) error {
	if h := r.SecretHolders(name); len(h) > 0 {
		return &SecretInUseError{Name: name, Holders: h, Verb: "replace"}
	}
	return r.Secrets().Set(name, value, now)
}

// RemoveSecret deletes a secret, unless an active sandbox holds it.
func (r *Runtime) RemoveSecret(name string) error {
	if h := r.SecretHolders(name); len(h) > 0 {
		return &SecretInUseError{Name: name, Holders: h, Verb: "remove"}
	}
	return r.Secrets().Remove(name)
}

// SecretHolders names the active sandboxes that were given a secret. Its
// value must not change or vanish under them: output redaction needs the
// value the guest holds.
func (r *Runtime) SecretHolders(name string) []string {
	out := []string{}
	sts, _ := r.List(true)
	for _, st := range sts {
		if !sandbox.Active(st.Status) || st.Attachments == nil {
			continue
		}
		for _, s := range st.Attachments.Secrets {
			if s.Name == name {
				out = append(out, st.Name)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// readAttachments reads a sandbox's attachments (nil when it has none).
func readAttachments(dir string) *sandbox.Attachments {
	var a sandbox.Attachments
	if err := sandbox.ReadJSON(filepath.Join(dir, sandbox.AttachmentsFile), &a); err != nil {
		return nil
	}
	return &a
}

// secretValues reads the values of a sandbox's secrets from the store.
func (r *Runtime) secretValues(a *sandbox.Attachments) (map[string][]byte, error) {
	if a == nil || len(a.Secrets) == 0 {
		return nil, nil
	}
	ss := r.Secrets()
	vals := map[string][]byte{}
	for _, ref := range a.Secrets {
		v, err := ss.Get(ref.Name)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrAttach, err)
		}
		vals[ref.Name] = v
	}
	return vals, nil
}

// secretEnv returns the environment variables a sandbox's secrets become,
// and a redactor for every one of its secret values.
func (r *Runtime) secretEnv(dir string) (map[string]string, *secret.Redactor, error) {
	a := readAttachments(dir)
	vals, err := r.secretValues(a)
	if err != nil || len(vals) == 0 {
		return nil, nil, err
	}
	env := map[string]string{}
	for _, ref := range a.Secrets {
		if ref.Env == "" {
			continue
		}
		v := vals[ref.Name]
		if bytes.IndexByte(v, 0) >= 0 {
			return nil, nil, fmt.Errorf("%w: secret %q holds a NUL byte and cannot be an environment variable; use a file target (%s/%s)", ErrAttach, ref.Name, secret.SecretsDir, ref.Name)
		}
		env[ref.Env] = string(v)
	}
	return env, secret.NewRedactor(vals), nil
}

// Redactor returns the redactor of a sandbox's secrets (empty when it has
// none). Surfaces that return captured guest output apply it.
func (r *Runtime) Redactor(nameOrID string) *secret.Redactor {
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil
	}
	vals, _ := r.secretValues(readAttachments(dir))
	return secret.NewRedactor(vals)
}

// placeSecretFiles writes a sandbox's file secrets into the guest's tmpfs
// (/run/secrets, mode 0400).
func (r *Runtime) placeSecretFiles(ctx context.Context, id string, a *sandbox.Attachments) error {
	vals, err := r.secretValues(a)
	if err != nil {
		return err
	}
	var files []secret.Ref
	for _, ref := range a.Secrets {
		if ref.Path != "" {
			files = append(files, ref)
		}
	}
	if len(files) == 0 {
		return nil
	}
	c, _, err := r.Connect(ctx, id)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, ref := range files {
		_, err := c.WriteFile(ctx, &agentpb.WriteFileHeader{Path: ref.Path, Mode: 0o400, HasMode: true, MakeParents: true}, bytes.NewReader(vals[ref.Name]))
		if err != nil {
			return fmt.Errorf("%w: place secret %q at %s: %v", ErrAttach, ref.Name, ref.Path, err)
		}
	}
	return nil
}

// receiptMounts lists a sandbox's host directories and volumes (as
// attachments.json records what its plan admitted) for its receipts.
func receiptMounts(dir string) []evidence.MountRecord {
	a := readAttachments(dir)
	if a == nil {
		return nil
	}
	var out []evidence.MountRecord
	for _, m := range a.Mounts {
		out = append(out, evidence.MountRecord{Kind: evidence.MountHostDir, Source: m.HostPath, GuestPath: m.GuestPath, ReadOnly: m.ReadOnly, Origin: m.Origin})
	}
	for _, v := range a.Volumes {
		out = append(out, evidence.MountRecord{Kind: evidence.MountVolume, Source: v.Name, GuestPath: v.GuestPath, ReadOnly: v.ReadOnly, Origin: v.Origin})
	}
	return out
}
