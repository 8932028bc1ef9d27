package runtime

// Warm pools: `mvmctl pool set IMAGE N` keeps N idle sandboxes of one image
// and shape running (restored from the image's ready snapshot), and Up
// takes one when the caller's options match instead of starting a VM.
// There is no daemon: pooled sandboxes are ordinary supervised sandboxes
// whose directory holds a pool marker; a claim renames the marker away
// (only one claimer can), and the claimed member's supervisor starts a
// replacement in the background (PoolFillCommand) once the claim has
// settled. See docs/snapshots.md, "Warm pools".

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/image/cache"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// PoolFillCommand is the hidden mvmctl subcommand that tops a pool up in
// the background after a claim.
const PoolFillCommand = "__pool-fill"

// MaxPoolSize bounds one pool (each member is a running VM).
const MaxPoolSize = 64

// Files of pools: the config under the state directory, the member marker
// in a pooled sandbox's directory.
const (
	poolsDir       = "pools"
	poolMarker     = "pool.json"
	poolClaimed    = "pool.claimed"
	poolFillLogExt = ".log"
)

// PoolShape is what a pooled sandbox was started with and what a caller
// must ask for to take it.
type PoolShape struct {
	Backend     string `json:"backend"`
	ImageDigest string `json:"image_digest"`
	RunProfile  string `json:"run_profile"`
	CPUs        int    `json:"cpus"`
	MemoryMiB   int    `json:"memory_mib"`
	DiskMiB     int    `json:"disk_mib"`
}

// ID names the pool of a shape.
func (s PoolShape) ID() string {
	b, _ := json.Marshal(s)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// PoolConfig is one pool as `pool set` left it.
type PoolConfig struct {
	ID        string    `json:"id"`
	Image     string    `json:"image"` // as the operator named it
	ImageName string    `json:"image_name"`
	Shape     PoolShape `json:"shape"`
	Size      int       `json:"size"`
	Updated   time.Time `json:"updated"`
}

// PoolStatus is a pool and its members now.
type PoolStatus struct {
	PoolConfig
	// Ready members can be claimed; Starting ones are still booting or
	// restoring.
	Ready    []string `json:"ready"`
	Starting []string `json:"starting"`
}

// poolMember is the marker in a pooled sandbox's directory.
type poolMember struct {
	Pool  string    `json:"pool"`
	Shape PoolShape `json:"shape"`
	// Warm is set once the member has run its warm-up command: only warm
	// members are claimed.
	Warm bool `json:"warm"`
}

func (r *Runtime) poolsRoot() string { return filepath.Join(r.Dirs.State, poolsDir) }

func (r *Runtime) poolPath(id string) string {
	return filepath.Join(r.poolsRoot(), id+".json")
}

// PoolOptions describe a pool to set.
type PoolOptions struct {
	Image string
	Size  int
	// CPUs, MemoryMiB, DiskMiB and RunProfile as for Up (0 and "" take
	// the same defaults, so that a plain `up --image IMAGE` matches).
	CPUs       int
	MemoryMiB  int
	DiskMiB    int
	RunProfile string
	// Progress, when set, receives short human-readable messages.
	Progress func(string)
}

// poolUpOptions are the options a pool's members are started with, and
// the ones a claimer's options are compared with.
func (o PoolOptions) upOptions() UpOptions {
	return UpOptions{Image: o.Image, CPUs: o.CPUs, MemoryMiB: o.MemoryMiB, DiskMiB: o.DiskMiB, RunProfile: o.RunProfile, NoBuildDir: false}
}

// shapeOf is the pool shape of options after defaults, on image img.
func shapeOf(o *UpOptions, img *bootImage, backendName string) PoolShape {
	disk := 0
	if img.rootfs != "" {
		disk = o.DiskMiB
	}
	return PoolShape{Backend: backendName, ImageDigest: img.ref.Digest, RunProfile: o.RunProfile, CPUs: o.CPUs, MemoryMiB: o.MemoryMiB, DiskMiB: disk}
}

// SetPool makes the pool of an image and shape hold Size idle sandboxes:
// it starts the missing ones (returning once they are ready) or removes
// the extra ones. Size 0 removes the pool and every idle member.
func (r *Runtime) SetPool(ctx context.Context, o PoolOptions) (*PoolStatus, error) {
	if o.Size < 0 || o.Size > MaxPoolSize {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "pool size %d: must be between 0 and %d", o.Size, MaxPoolSize)
	}
	up := o.upOptions()
	if err := up.Validate(); err != nil {
		return nil, err
	}
	backendName, err := r.backend()
	if err != nil {
		return nil, err
	}
	img, err := r.resolveImage(ctx, up.Image, backendName, true, image.PullOptions{}, nil)
	if err != nil {
		return nil, err
	}
	if img.artifact != nil && (img.artifact.Network != "" && img.artifact.Network != "none") {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "image %s asks for a network: pooled sandboxes have none (a NIC cannot be added to a restored machine)", img.ref.Name)
	}
	up.defaults(img)
	shape := shapeOf(&up, img, backendName)
	cfg := PoolConfig{ID: shape.ID(), Image: o.Image, ImageName: img.ref.Name, Shape: shape, Size: o.Size, Updated: time.Now().UTC()}
	if cfg.Image == "" {
		cfg.Image = img.ref.Name
	}
	unlock, err := r.lockPool(ctx, cfg.ID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if o.Size == 0 {
		if err := os.Remove(r.poolPath(cfg.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	} else if err := sandbox.WriteJSON(r.poolPath(cfg.ID), cfg); err != nil {
		return nil, err
	}
	if err := r.fillLocked(ctx, cfg, o.Progress); err != nil {
		return nil, err
	}
	if o.Size == 0 {
		// Nothing of the pool stays behind (the lock goes last: a filler
		// waiting on it finds no config and drains nothing).
		os.Remove(filepath.Join(r.poolsRoot(), cfg.ID+poolFillLogExt))
		os.Remove(filepath.Join(r.poolsRoot(), cfg.ID+".lock"))
	}
	return r.poolStatus(cfg), nil
}

// lockPool takes a pool's lock: the one filler at a time, and `pool set`.
func (r *Runtime) lockPool(ctx context.Context, id string) (func(), error) {
	if err := os.MkdirAll(r.poolsRoot(), 0o700); err != nil {
		return nil, err
	}
	return cache.Lock(ctx, filepath.Join(r.poolsRoot(), id+".lock"))
}

// RefillDelayEnv sets how long after a claim the background refill starts
// a replacement (a Go duration; default 1s): on a small host a VM starting
// beside the taker would slow the taker's first commands. The claimed
// sandbox's supervisor waits it out (and starts the refill at once if
// the sandbox ends first).
const RefillDelayEnv = "MVM_POOL_REFILL_DELAY"

func refillDelay() time.Duration {
	if d, err := time.ParseDuration(os.Getenv(RefillDelayEnv)); err == nil && d >= 0 {
		return d
	}
	return time.Second
}

// FillPool tops pool id up to its size (the background refill after a
// claim). A pool removed meanwhile is drained instead.
func (r *Runtime) FillPool(ctx context.Context, id string) error {
	unlock, err := r.lockPool(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	var cfg PoolConfig
	if err := sandbox.ReadJSON(r.poolPath(id), &cfg); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			cfg = PoolConfig{ID: id}
		} else {
			return err
		}
	}
	return r.fillLocked(ctx, cfg, nil)
}

// fillLocked starts or removes members until the pool has cfg.Size. It
// runs under the pool's lock, so members are counted once per filler.
func (r *Runtime) fillLocked(ctx context.Context, cfg PoolConfig, progress func(string)) error {
	if progress == nil {
		progress = func(string) {}
	}
	for {
		members := r.poolMembers(cfg.ID)
		n := len(members.ready) + len(members.starting)
		switch {
		case n < cfg.Size:
			progress(fmt.Sprintf("pool %s: starting member %d of %d", cfg.ID, n+1, cfg.Size))
			up := UpOptions{
				Image: cfg.Shape.ImageDigest, CPUs: cfg.Shape.CPUs, MemoryMiB: cfg.Shape.MemoryMiB,
				DiskMiB: cfg.Shape.DiskMiB, RunProfile: cfg.Shape.RunProfile, NoBuildDir: true,
				pool: &poolMember{Pool: cfg.ID, Shape: cfg.Shape},
			}
			if cfg.ImageName == "minimal" {
				up.Image = "" // the initramfs image has no artifact digest to name
			}
			sb, err := r.Up(ctx, up)
			if err != nil {
				return fmt.Errorf("pool %s: start a member: %w", cfg.ID, err)
			}
			if err := r.warmMember(ctx, sb, *up.pool); err != nil {
				r.Down(context.Background(), sb.ID)
				return fmt.Errorf("pool %s: warm a member: %w", cfg.ID, err)
			}
		case n > cfg.Size:
			// Starting members go first (they are not ready anyway), then
			// the youngest ready ones.
			victims := append(append([]string{}, members.starting...), members.ready...)
			removed := false
			for _, id := range victims[:n-cfg.Size] {
				if r.takeMember(id, "removing") {
					r.Down(context.Background(), id)
					removed = true
				}
			}
			if !removed {
				return nil
			}
		default:
			return nil
		}
	}
}

type members struct{ ready, starting []string }

// poolMembers lists the unclaimed members of pool id, oldest first.
func (r *Runtime) poolMembers(id string) members {
	var m members
	ids, _ := r.Layout.IDs()
	type member struct {
		id      string
		created time.Time
		ready   bool
	}
	var all []member
	for _, sid := range ids {
		dir := r.Layout.Dir(sid)
		var pm poolMember
		if sandbox.ReadJSON(filepath.Join(dir, poolMarker), &pm) != nil || pm.Pool != id {
			continue
		}
		st, err := sandbox.ReadState(dir)
		if err != nil {
			// No state yet: Up is between creating the directory and
			// spawning the supervisor.
			all = append(all, member{id: sid})
			continue
		}
		if !sandbox.Active(st.Status) || !supervisorAlive(st.SupervisorPID, dir) {
			continue // failed or dead: not a member anyone can use
		}
		all = append(all, member{id: sid, created: st.Created, ready: st.Status == sandbox.Running && pm.Warm})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].created.Before(all[j].created) })
	for _, x := range all {
		if x.ready {
			m.ready = append(m.ready, x.id)
		} else {
			m.starting = append(m.starting, x.id)
		}
	}
	return m
}

// takeMember atomically takes sandbox id out of its pool: it renames the
// marker away, which only one caller can do. why ends up in the renamed
// marker's name (for people looking at the directory).
func (r *Runtime) takeMember(id, why string) bool {
	dir := r.Layout.Dir(id)
	return os.Rename(filepath.Join(dir, poolMarker), filepath.Join(dir, poolClaimed+"."+why)) == nil
}

// returnMember puts a taken member back (a claim that could not finish
// for a reason that is the caller's, such as a name already in use).
func (r *Runtime) returnMember(id, why string) {
	dir := r.Layout.Dir(id)
	os.Rename(filepath.Join(dir, poolClaimed+"."+why), filepath.Join(dir, poolMarker))
}

func (r *Runtime) poolStatus(cfg PoolConfig) *PoolStatus {
	m := r.poolMembers(cfg.ID)
	ps := &PoolStatus{PoolConfig: cfg, Ready: m.ready, Starting: m.starting}
	if ps.Ready == nil {
		ps.Ready = []string{}
	}
	if ps.Starting == nil {
		ps.Starting = []string{}
	}
	return ps
}

// Pools lists the pools of this state directory.
func (r *Runtime) Pools() ([]*PoolStatus, error) {
	ents, err := os.ReadDir(r.poolsRoot())
	if errors.Is(err, os.ErrNotExist) {
		return []*PoolStatus{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []*PoolStatus{}
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".json" {
			continue
		}
		var cfg PoolConfig
		if sandbox.ReadJSON(filepath.Join(r.poolsRoot(), e.Name()), &cfg) != nil || cfg.ID == "" {
			continue
		}
		out = append(out, r.poolStatus(cfg))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Image < out[j].Image })
	return out, nil
}

// poolableReason says why options cannot take a pooled sandbox ("" when
// they can): what a pooled sandbox was started without cannot be added.
func poolableReason(o *UpOptions, att *sandbox.Attachments) string {
	switch {
	case o.Cold:
		return "cold start requested"
	case o.pool != nil:
		return "a pool member"
	case o.Workload != nil:
		return "a declared workload"
	case o.Network.HasNIC():
		return "a network"
	case att != nil && (len(att.Mounts) > 0 || len(att.Volumes) > 0):
		return "host directories or volumes"
	case o.RootDir != nil || len(o.Labels) > 0:
		return "a bundle sandbox"
	}
	return ""
}

// claimPooled takes a ready member of the pool matching o, if there is
// one, and makes it the caller's sandbox: the caller's plan is admitted
// (a pool is no way around policy), the name, TTL and environment become
// the caller's, the guest gets a fresh identity (its supervisor holds every
// agent connection until then), and the member's supervisor starts a
// replacement in the background. ok is false when no member could be taken; Up then
// starts a sandbox itself.
func (r *Runtime) claimPooled(ctx context.Context, o *UpOptions, img *bootImage, att *sandbox.Attachments, backendName string) (sb *Sandbox, ok bool, err error) {
	if poolableReason(o, att) != "" {
		return nil, false, nil
	}
	shape := shapeOf(o, img, backendName)
	poolID := shape.ID()
	for _, id := range r.poolMembers(poolID).ready {
		if !r.takeMember(id, "claim") {
			continue // another caller took it
		}
		sb, err := r.finishClaim(ctx, o, img, att, backendName, poolID, id)
		if errors.Is(err, errMemberUnusable) {
			r.Down(context.Background(), id)
			continue
		}
		return sb, err == nil, err
	}
	return nil, false, nil
}

// errMemberUnusable: the member taken could not be made the caller's
// (its supervisor or guest failed); it is removed and the next is tried.
var errMemberUnusable = errors.New("pooled sandbox unusable")

func (r *Runtime) finishClaim(ctx context.Context, o *UpOptions, img *bootImage, att *sandbox.Attachments, backendName, poolID, id string) (*Sandbox, error) {
	dir := r.Layout.Dir(id)
	var spec sandbox.Spec
	if err := sandbox.ReadJSON(filepath.Join(dir, sandbox.SpecFile), &spec); err != nil {
		return nil, fmt.Errorf("%w: %v", errMemberUnusable, err)
	}
	poolName := spec.Name
	name := o.Name
	if name == "" {
		prefix := "sb"
		if o.Transient {
			prefix = "run"
		}
		name = prefix + "-" + id
	}
	if err := r.Layout.Reserve(name, id); err != nil {
		r.returnMember(id, "claim")
		return nil, err
	}
	undo := func() {
		r.Layout.Release(name, id)
		r.returnMember(id, "claim")
	}
	in, err := planFor(o, img, backendName, id, name)
	if err != nil {
		undo()
		return nil, err
	}
	withAttachments(&in, att, *o)
	t0 := time.Now()
	adm, err := r.admit(ctx, in, dir)
	if err != nil {
		undo()
		return nil, err
	}
	timings := &sandbox.ClaimReport{AdmitMS: float64(time.Since(t0).Microseconds()) / 1000}
	// From here on the member is the caller's: failures remove it.
	envKeys := make([]string, 0, len(o.Env))
	for k := range o.Env {
		envKeys = append(envKeys, k)
	}
	sort.Strings(envKeys)
	spec.Name, spec.Transient, spec.TTL, spec.Env = name, o.Transient, o.TTL, envKeys
	spec.PlanHash, spec.RunProfile = adm.Hash, string(adm.Plan.RunProfile)
	spec.Start.Pool = poolID
	spec.Created = time.Now().UTC()
	fail := func(err error) (*Sandbox, error) {
		r.Layout.Release(name, id)
		r.Layout.Release(poolName, id)
		return nil, fmt.Errorf("%w: %v", errMemberUnusable, err)
	}
	if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.SpecFile), spec); err != nil {
		return fail(err)
	}
	if len(o.Env) > 0 {
		if err := sandbox.WriteJSON(filepath.Join(dir, envFile), o.Env); err != nil {
			return fail(err)
		}
	}
	if !att.Empty() {
		if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.AttachmentsFile), att); err != nil {
			return fail(err)
		}
	}
	st, hold, err := r.claimSupervisor(ctx, dir, o.Transient, timings, r.refillRequest(poolID))
	if err != nil {
		return fail(err)
	}
	r.Layout.Release(poolName, id)
	sb := &Sandbox{ID: id, Name: name, Dir: dir, State: st, Plan: adm.Plan, Start: st.Boot.Start, Pool: poolID}
	if hold != nil {
		sb.Hold = hold
	}
	// The supervisor recorded sandbox.claimed in the audit chain.
	if err := r.placeSecretFiles(ctx, id, att); err != nil {
		r.Down(context.Background(), id)
		if hold != nil {
			hold.Close()
		}
		return nil, err
	}
	st.Attachments = att
	return sb, nil
}

// refillRequest asks the claimed member's supervisor to top the pool up
// in a background mvmctl (its own session; its output goes to the pool's
// log) once the claim has settled: started from the claimer, its start-up
// would compete with the claimer's first commands.
func (r *Runtime) refillRequest(poolID string) *sandbox.Refill {
	return &sandbox.Refill{
		Args: []string{PoolFillCommand, poolID}, Dir: r.Dirs.State,
		Log: filepath.Join(r.poolsRoot(), poolID+poolFillLogExt), DelayMS: refillDelay().Milliseconds(),
	}
}

// claimSupervisor asks a pooled sandbox's supervisor to take over the
// claimer's spec. A transient claimer keeps the write end of a new hold
// pipe (returned) and hands the read end over with the request.
func (r *Runtime) claimSupervisor(ctx context.Context, dir string, transient bool, timings *sandbox.ClaimReport, refill *sandbox.Refill) (*sandbox.State, *os.File, error) {
	var rd, hold *os.File
	if transient {
		var err error
		if rd, hold, err = os.Pipe(); err != nil {
			return nil, nil, err
		}
		defer rd.Close()
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := sandbox.ControlWithFile(cctx, dir, sandbox.Request{Op: "claim", Claim: timings, Refill: refill}, rd)
	if err == nil && !resp.OK {
		err = errors.New(resp.Error)
	}
	if err != nil {
		if hold != nil {
			hold.Close()
		}
		return nil, nil, err
	}
	return resp.State, hold, nil
}

// isPoolMember reports whether the sandbox in dir idles in a pool.
func isPoolMember(dir string) bool {
	_, err := os.Lstat(filepath.Join(dir, poolMarker))
	return err == nil
}

// warmMember runs `true` in a new member before it can be claimed: under
// emulation (TCG) the first process in a VM pays for translating the code
// of the agent's exec path and the guest kernel's fork and exec, about
// 0.1-0.3 s that would otherwise land on the claimer's first command. The
// run is recorded in the audit chain under the member's id.
func (r *Runtime) warmMember(ctx context.Context, sb *Sandbox, m poolMember) error {
	c, err := agentapi.Dial(ctx, func(ctx context.Context) (net.Conn, error) {
		return sandbox.DialIn(ctx, sb.Dir, sandbox.AgentSocket)
	})
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"true"}})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("warm-up command exited %d", res.ExitCode)
	}
	if _, err := r.Audit("pool.member_warmed", sb.ID, map[string]any{"pool": m.Pool}); err != nil {
		return err
	}
	m.Warm = true
	return sandbox.WriteJSON(filepath.Join(sb.Dir, poolMarker), m)
}
