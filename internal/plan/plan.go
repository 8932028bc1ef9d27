// Package plan synthesizes, signs, verifies and admits execution plans.
// Every boot is admitted through a signed plan: Synthesize -> Sign ->
// Admit (verify signature, check window, check profile policy, consume
// nonce, store, audit). An admission failure means no boot.
package plan

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/mvm-sandbox/mvm/internal/atomicfile"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// SchemaVersion is the plan schema this build writes and admits. Version 1
// plans (with "profile" for the run profile, no image profile, backend or
// published ports) are still read, for the hash of sandboxes admitted by
// an older mvmctl, but never admitted.
const SchemaVersion = 2

// DefaultValidity is the plan validity window.
const DefaultValidity = 10 * time.Minute

// SandboxRef names the sandbox a plan boots.
type SandboxRef struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// Resources are the VM's sizes.
type Resources struct {
	CPUs      int `json:"cpus"`
	MemoryMiB int `json:"memory_mib"`
	DiskMiB   int `json:"disk_mib"`
}

// Plan is an execution plan. It holds host and guest paths of mounts (it is
// an admission document stored with the sandbox, mode 0600) but never env
// values or argv.
type Plan struct {
	SchemaVersion int        `json:"schema_version"`
	PlanID        string     `json:"plan_id"`
	Sandbox       SandboxRef `json:"sandbox"`
	ImageDigest   string     `json:"image_digest"`
	KernelDigest  string     `json:"kernel_digest"`
	// ImageProfile is the profile of the artifact booted (dev or sealed),
	// as the host recorded it when the image was built.
	ImageProfile string `json:"image_profile"`
	// Backend is the VMM that boots the plan (qemu or firecracker).
	Backend   string    `json:"backend"`
	Resources Resources `json:"resources"`
	// RunProfile is how much of the host the run may reach.
	RunProfile Profile `json:"run_profile"`
	Network    Network `json:"network"`
	Mounts     []Mount `json:"mounts"`
	// AllowRWMount records --allow-rw-mount: read-write host directories
	// under a profile that otherwise allows only read-only ones.
	AllowRWMount bool `json:"allow_rw_mount,omitempty"`
	// AllowManifestMounts records --allow-manifest-mounts when it admitted
	// mounts an image manifest asked for (their Origin is "manifest").
	AllowManifestMounts bool `json:"allow_manifest_mounts,omitempty"`
	// AllowManifestSecrets records --allow-manifest-secrets when it
	// admitted secrets an image manifest asked for.
	AllowManifestSecrets bool          `json:"allow_manifest_secrets,omitempty"`
	Volumes              []VolumeMount `json:"volumes,omitempty"`
	// Secrets are names and targets, never values.
	Secrets []SecretRef `json:"secrets,omitempty"`
	EnvKeys []string    `json:"env_keys"`
	// Console reports whether a console (an interactive terminal in the
	// guest) may be opened: the run profile allows it and the image is
	// not sealed. The supervisor tells the agent at boot.
	Console bool `json:"console"`

	// WorkloadIRSHA256 is the Workload IR hash of a declared workload.
	WorkloadIRSHA256 string `json:"workload_ir_sha256,omitempty"`
	// OCIDigest is the manifest digest of the OCI image the booted
	// artifact was made from ("" for template images).
	OCIDigest string `json:"oci_digest,omitempty"`
	// RootDir is set when the root of the sandbox's processes is a host
	// directory (an OCI bundle's rootfs), shared read-write.
	RootDir *RootDir `json:"root_dir,omitempty"`

	ValidFrom  string `json:"valid_from"`
	ValidUntil string `json:"valid_until"`
	Nonce      string `json:"nonce"`
}

// RootDir is a host directory shared read-write as the root of a
// sandbox's processes: an OCI bundle's rootfs that the caller (the
// containerd shim) prepared. It is the workload's own root, not a host
// directory of the operator's, so every run profile admits it; it is
// recorded here so that receipts name what the sandbox ran on.
type RootDir struct {
	HostPath  string `json:"host_path"`
	BundleDir string `json:"bundle_dir,omitempty"`
	// ReadOnly is the bundle's root.readonly (enforced in the guest).
	ReadOnly bool `json:"read_only,omitempty"`
}

// Image profiles.
const (
	ImageDev    = "dev"
	ImageSealed = "sealed"
)

// Backends.
const (
	BackendQEMU        = "qemu"
	BackendFirecracker = "firecracker"
)

// Input is what a boot asks for.
type Input struct {
	SandboxID            string
	SandboxName          string
	ImageDigest          string
	KernelDigest         string
	ImageProfile         string // "" means ImageDev
	Backend              string // "" means BackendQEMU
	Resources            Resources
	RunProfile           Profile // "" means DefaultProfile
	Network              Network // zero value means no network
	Mounts               []Mount
	AllowRWMount         bool
	AllowManifestMounts  bool
	AllowManifestSecrets bool
	Volumes              []VolumeMount
	Secrets              []SecretRef
	EnvKeys              []string // names only
	// Console asks for console access; a plan that asks for it under a
	// profile that refuses it is refused. ConsoleIfAllowed instead sets
	// Console to whatever the run and image profiles allow.
	Console          bool
	ConsoleIfAllowed bool

	// WorkloadIRSHA256 is the Workload IR hash of a declared workload.
	WorkloadIRSHA256 string
	// OCIDigest is the OCI manifest digest behind the image ("" for none).
	OCIDigest string
	// RootDir is the host directory that is the processes' root.
	RootDir *RootDir

	// Validity overrides DefaultValidity (tests).
	Validity time.Duration
}

// Synthesize builds a plan from in, valid from now for DefaultValidity,
// with a fresh 32-byte nonce. It checks the plan is well formed; whether
// the profile allows it is checked by Admit (and Profile.Validate).
func Synthesize(in Input, now time.Time) (*Plan, error) {
	prof := in.RunProfile
	if prof == "" {
		prof = DefaultProfile
	}
	imgProf := in.ImageProfile
	if imgProf == "" {
		imgProf = ImageDev
	}
	backend := in.Backend
	if backend == "" {
		backend = BackendQEMU
	}
	console := in.Console
	if in.ConsoleIfAllowed {
		console = prof.AllowsConsole() && imgProf != ImageSealed
	}
	validity := in.Validity
	if validity <= 0 {
		validity = DefaultValidity
	}
	var nonce [32]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	net := in.Network
	if net.Mode == "" {
		net.Mode = NetNone
	}
	if net.Allow == nil {
		net.Allow = []string{}
	}
	net.Publish = append([]Port{}, net.Publish...)
	mounts := append([]Mount{}, in.Mounts...)
	env := append([]string{}, in.EnvKeys...)
	sort.Strings(env)
	p := &Plan{
		SchemaVersion:        SchemaVersion,
		PlanID:               evidence.NewID(),
		Sandbox:              SandboxRef{ID: in.SandboxID, Name: in.SandboxName},
		ImageDigest:          in.ImageDigest,
		KernelDigest:         in.KernelDigest,
		ImageProfile:         imgProf,
		Backend:              backend,
		Resources:            in.Resources,
		RunProfile:           prof,
		Network:              net,
		Mounts:               mounts,
		AllowRWMount:         in.AllowRWMount,
		AllowManifestMounts:  in.AllowManifestMounts,
		AllowManifestSecrets: in.AllowManifestSecrets,
		Volumes:              in.Volumes,
		Secrets:              in.Secrets,
		EnvKeys:              env,
		Console:              console,

		WorkloadIRSHA256: in.WorkloadIRSHA256,
		OCIDigest:        in.OCIDigest,
		RootDir:          in.RootDir,

		ValidFrom:  evidence.FormatTime(now),
		ValidUntil: evidence.FormatTime(now.Add(validity)),
		Nonce:      hex.EncodeToString(nonce[:]),
	}
	if err := p.Check(); err != nil {
		return nil, err
	}
	return p, nil
}

var (
	nameRe  = lazyre.New(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	nonceRe = lazyre.New(`^[0-9a-f]{64}$`)
)

// Check verifies that the plan is well formed (schema, not policy).
func (p *Plan) Check() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
	}
	if p.SchemaVersion != SchemaVersion {
		return fmt.Errorf("%w: plan schema_version %d, this build admits %d", ErrUnsupportedSchema, p.SchemaVersion, SchemaVersion)
	}
	if !evidence.IsID(p.PlanID) {
		return bad("plan_id is not a UUID v4")
	}
	if !nameRe.MatchString(p.Sandbox.ID) {
		return bad("sandbox id %q is not a valid id", p.Sandbox.ID)
	}
	if p.Sandbox.Name != "" && !nameRe.MatchString(p.Sandbox.Name) {
		return bad("sandbox name %q is not a valid name", p.Sandbox.Name)
	}
	if !evidence.IsDigest(p.ImageDigest) {
		return bad("image_digest %q is not a digest", p.ImageDigest)
	}
	if p.OCIDigest != "" && !evidence.IsDigest(p.OCIDigest) {
		return bad("oci_digest %q is not a digest", p.OCIDigest)
	}
	if !evidence.IsDigest(p.KernelDigest) {
		return bad("kernel_digest %q is not a digest", p.KernelDigest)
	}
	r := p.Resources
	if r.CPUs < 1 || r.CPUs > 256 {
		return bad("cpus %d outside 1..256", r.CPUs)
	}
	if r.MemoryMiB < 16 || r.MemoryMiB > 1<<20 {
		return bad("memory_mib %d outside 16..1048576", r.MemoryMiB)
	}
	if r.DiskMiB < 0 || r.DiskMiB > 1<<24 {
		return bad("disk_mib %d outside 0..16777216", r.DiskMiB)
	}
	if _, ok := profileCaps[p.RunProfile]; !ok {
		return bad("unknown run profile %q", string(p.RunProfile))
	}
	if p.ImageProfile != ImageDev && p.ImageProfile != ImageSealed {
		return bad("image_profile %q is not dev or sealed", p.ImageProfile)
	}
	if p.Backend != BackendQEMU && p.Backend != BackendFirecracker {
		return bad("backend %q is not qemu or firecracker", p.Backend)
	}
	if p.Mounts == nil || p.EnvKeys == nil || p.Network.Allow == nil || p.Network.Publish == nil {
		return bad("mounts, env_keys, network.allow and network.publish must be present")
	}
	if rd := p.RootDir; rd != nil {
		if !isCleanAbs(rd.HostPath) || rd.HostPath == "/" {
			return bad("root_dir.host_path must be absolute, clean and not /")
		}
		if rd.BundleDir != "" && !isCleanAbs(rd.BundleDir) {
			return bad("root_dir.bundle_dir must be absolute and clean")
		}
	}
	if p.Console && p.ImageProfile == ImageSealed {
		return bad("console on a sealed image")
	}
	if !sort.StringsAreSorted(p.EnvKeys) {
		return bad("env_keys must be sorted")
	}
	from, err := evidence.ParseTime(p.ValidFrom)
	if err != nil {
		return bad("valid_from: %v", err)
	}
	until, err := evidence.ParseTime(p.ValidUntil)
	if err != nil {
		return bad("valid_until: %v", err)
	}
	if !until.After(from) {
		return bad("valid_until is not after valid_from")
	}
	if until.Sub(from) > time.Hour {
		return bad("validity window %s exceeds 1h", until.Sub(from))
	}
	if !nonceRe.MatchString(p.Nonce) {
		return bad("nonce is not 32 bytes of lowercase hex")
	}
	return nil
}

// Window returns the parsed validity window.
func (p *Plan) Window() (from, until time.Time, err error) {
	if from, err = evidence.ParseTime(p.ValidFrom); err != nil {
		return
	}
	until, err = evidence.ParseTime(p.ValidUntil)
	return
}

// Request returns what the plan asks of its profile.
func (p *Plan) Request() Request {
	return Request{EnvKeys: p.EnvKeys, Mounts: p.Mounts, Network: p.Network, Console: p.Console,
		AllowRWMount: p.AllowRWMount, AllowManifestMounts: p.AllowManifestMounts, AllowManifestSecrets: p.AllowManifestSecrets, Volumes: p.Volumes, Secrets: p.Secrets}
}

// CheckPolicy is the one answer to "would this plan be admitted by its
// profile": Admit calls it, and so does a dry run (on a plan synthesized
// but not signed). lookupEnv reads MVM_ACK_PERMISSIVE_RUN (os.LookupEnv
// when nil).
func CheckPolicy(p *Plan, lookupEnv func(string) (string, bool)) error {
	if err := p.Check(); err != nil {
		return err
	}
	req := p.Request()
	req.AckPermissive = PermissiveAcknowledged(lookupEnv)
	return p.RunProfile.Validate(req)
}

// SignedPlan is a plan with its signature. On disk it is the canonical
// JSON {"payload":{...},"public_key_sha256":"...","signature":"<base64>",
// "signer_id":"host:<hostname>"} plus "\n". The signature is Ed25519 over
// evidence.DomainPlan || JCS(payload).
type SignedPlan struct {
	Payload         Plan   `json:"payload"`
	SignerID        string `json:"signer_id"`
	PublicKeySHA256 string `json:"public_key_sha256"`
	Signature       string `json:"signature"`

	// raw is the canonical bytes a parsed plan was read from (a version 1
	// plan re-encodes differently, so its hash is taken from these).
	raw []byte
}

// Sign signs p with s.
func Sign(p *Plan, s *evidence.Signer) (*SignedPlan, error) {
	if err := p.Check(); err != nil {
		return nil, err
	}
	b, err := evidence.Canonical(p)
	if err != nil {
		return nil, err
	}
	return &SignedPlan{
		Payload:         *p,
		SignerID:        s.ID,
		PublicKeySHA256: s.Fingerprint(),
		Signature:       base64.StdEncoding.EncodeToString(s.Sign(evidence.DomainPlan, b)),
	}, nil
}

// Prepare synthesizes and signs a plan in one step.
func Prepare(in Input, s *evidence.Signer, now time.Time) (*SignedPlan, error) {
	p, err := Synthesize(in, now)
	if err != nil {
		return nil, err
	}
	return Sign(p, s)
}

// Canonical returns the canonical bytes of the signed plan (the stored
// file without its trailing "\n").
func (sp *SignedPlan) Canonical() ([]byte, error) { return evidence.Canonical(sp) }

// Hash is the plan hash receipts carry: sha256 hex of Canonical().
func (sp *SignedPlan) Hash() (string, error) {
	if sp.raw != nil {
		return evidence.SHA256Hex(sp.raw), nil
	}
	b, err := sp.Canonical()
	if err != nil {
		return "", err
	}
	return evidence.SHA256Hex(b), nil
}

// Parse reads a stored signed plan strictly (unknown fields and
// non-canonical encodings are refused). It does not verify the signature.
func Parse(b []byte) (*SignedPlan, error) {
	var peek struct {
		Payload struct {
			SchemaVersion int `json:"schema_version"`
		} `json:"payload"`
	}
	if err := json.Unmarshal(b, &peek); err == nil && peek.Payload.SchemaVersion == 1 {
		return parseV1(b)
	}
	var sp SignedPlan
	if err := evidence.DecodeStrict(b, &sp); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	c, err := sp.Canonical()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(c, bytes.TrimSuffix(b, []byte("\n"))) {
		return nil, fmt.Errorf("%w: signed plan is not in canonical form", ErrMalformed)
	}
	return &sp, nil
}

// planV1 is the version 1 payload, read for old sandboxes only.
type planV1 struct {
	SchemaVersion int        `json:"schema_version"`
	PlanID        string     `json:"plan_id"`
	Sandbox       SandboxRef `json:"sandbox"`
	ImageDigest   string     `json:"image_digest"`
	KernelDigest  string     `json:"kernel_digest"`
	Resources     Resources  `json:"resources"`
	Profile       Profile    `json:"profile"`
	Network       struct {
		Mode  NetMode  `json:"mode"`
		Allow []string `json:"allow"`
	} `json:"network"`
	Mounts     []Mount  `json:"mounts"`
	EnvKeys    []string `json:"env_keys"`
	Console    bool     `json:"console"`
	ValidFrom  string   `json:"valid_from"`
	ValidUntil string   `json:"valid_until"`
	Nonce      string   `json:"nonce"`
}

// parseV1 reads a version 1 signed plan strictly and converts it; its
// Hash is that of the bytes read. Admit refuses it (schema).
func parseV1(b []byte) (*SignedPlan, error) {
	var v struct {
		Payload         planV1 `json:"payload"`
		SignerID        string `json:"signer_id"`
		PublicKeySHA256 string `json:"public_key_sha256"`
		Signature       string `json:"signature"`
	}
	if err := evidence.DecodeStrict(b, &v); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	c, err := evidence.Canonical(v)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(c, bytes.TrimSuffix(b, []byte("\n"))) {
		return nil, fmt.Errorf("%w: signed plan is not in canonical form", ErrMalformed)
	}
	o := v.Payload
	return &SignedPlan{
		Payload: Plan{
			SchemaVersion: o.SchemaVersion, PlanID: o.PlanID, Sandbox: o.Sandbox,
			ImageDigest: o.ImageDigest, KernelDigest: o.KernelDigest, ImageProfile: ImageDev, Backend: BackendQEMU,
			Resources: o.Resources, RunProfile: o.Profile,
			Network: Network{Mode: o.Network.Mode, Allow: o.Network.Allow, Publish: []Port{}},
			Mounts:  o.Mounts, EnvKeys: o.EnvKeys, Console: o.Console,
			ValidFrom: o.ValidFrom, ValidUntil: o.ValidUntil, Nonce: o.Nonce,
		},
		SignerID: v.SignerID, PublicKeySHA256: v.PublicKeySHA256, Signature: v.Signature,
		raw: c,
	}, nil
}

// Load reads and parses a stored plan file.
func Load(path string) (*SignedPlan, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(b)
}

// Store writes the signed plan to path atomically, mode 0600.
func Store(sp *SignedPlan, path string) error {
	b, err := sp.Canonical()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o600)
}

// Verify checks the plan is well formed and signed by trusted.
func Verify(sp *SignedPlan, trusted ed25519.PublicKey) error {
	if err := sp.Payload.Check(); err != nil {
		return err
	}
	if len(trusted) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: no trusted key", ErrBadSignature)
	}
	if sp.PublicKeySHA256 != evidence.Fingerprint(trusted) {
		return fmt.Errorf("%w: plan signed by key %.16s…, trusted key is %.16s…", ErrUntrustedKey, sp.PublicKeySHA256, evidence.Fingerprint(trusted))
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(sp.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: signature is not %d bytes of base64", ErrBadSignature, ed25519.SignatureSize)
	}
	b, err := evidence.Canonical(sp.Payload)
	if err != nil {
		return err
	}
	if !evidence.Verify(trusted, evidence.DomainPlan, b, sig) {
		return fmt.Errorf("%w: Ed25519 signature does not verify", ErrBadSignature)
	}
	return nil
}

// CheckWindow refuses a plan when now is outside [valid_from, valid_until).
func CheckWindow(p *Plan, now time.Time) error {
	from, until, err := p.Window()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if now.Before(from) {
		return fmt.Errorf("%w: now %s is before valid_from %s", ErrOutsideWindow, evidence.FormatTime(now), p.ValidFrom)
	}
	if !now.Before(until) {
		return fmt.Errorf("%w: now %s is not before valid_until %s", ErrOutsideWindow, evidence.FormatTime(now), p.ValidUntil)
	}
	return nil
}

// Sentinel errors; AdmissionError wraps them (use errors.Is).
var (
	ErrMalformed         = errors.New("plan malformed")
	ErrUnsupportedSchema = errors.New("plan schema unsupported")
	ErrBadSignature      = errors.New("plan signature invalid")
	ErrUntrustedKey      = errors.New("plan signed by an untrusted key")
	ErrOutsideWindow     = errors.New("plan validity window violated")
	ErrReplay            = errors.New("plan replay detected")
)
