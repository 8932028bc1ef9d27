package mcp

// The lifecycle of the sandboxes this server creates: the table of
// handles, sandbox_create/list/destroy, idle and lifetime reaping.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mvm-sandbox/mvm/internal/image/oci"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/runtime"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// box is a sandbox created through sandbox_create.
type box struct {
	handle   string
	id       string
	template string
	image    string
	cpus     int
	mem      int
	created  time.Time
	expires  time.Time
	hold     io.Closer
	lastUsed time.Time
	active   int // tool calls acting on it now
	// The network and run profile it was admitted with (read back from
	// the runtime's admitted plan, never recomputed here).
	network      string
	allow        []string
	profile      string
	imageProfile string
	// free gives its place under the session caps back (once its VM is
	// gone).
	free func()
}

// acquire finds one of the server's sandboxes by handle and marks it in
// use, so that the idle reaper leaves it alone until release.
func (s *Server) acquire(handle string) (*box, error) {
	if handle == "" {
		return nil, errors.New(`"sandbox" is required: pass the handle sandbox_create returned`)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.boxes[handle]
	if !ok {
		for _, c := range s.boxes { // the runtime id works too
			if c.id == handle {
				b, ok = c, true
				break
			}
		}
	}
	if !ok {
		if why, gone := s.gone[handle]; gone {
			return nil, fmt.Errorf("sandbox %q no longer exists: %s; create a new one with sandbox_create", handle, why)
		}
		return nil, fmt.Errorf("unknown sandbox %q: this server only acts on sandboxes it created (sandbox_list shows them)", handle)
	}
	b.active++
	b.lastUsed = s.now()
	return b, nil
}

func (s *Server) release(b *box) {
	s.mu.Lock()
	b.active--
	b.lastUsed = s.now()
	s.mu.Unlock()
}

// forget removes a box from the table and remembers why (under s.mu).
func (s *Server) forgetLocked(b *box, why string) {
	delete(s.boxes, b.handle)
	const keep = 256
	if _, dup := s.gone[b.handle]; !dup {
		s.goneOrder = append(s.goneOrder, b.handle)
	}
	s.gone[b.handle] = why
	for len(s.goneOrder) > keep {
		delete(s.gone, s.goneOrder[0])
		s.goneOrder = s.goneOrder[1:]
	}
}

// reaper destroys sandboxes idle longer than SessionIdle and older than
// SessionMax.
func (s *Server) reaper() {
	t := time.NewTicker(s.reapInt)
	defer t.Stop()
	for {
		select {
		case <-s.base.Done():
			return
		case <-t.C:
		}
		s.reap(s.now())
	}
}

func (s *Server) reap(now time.Time) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	var victims []*box
	var reasons []string
	for _, b := range s.boxes {
		var why string
		switch {
		case !now.Before(b.expires):
			why = fmt.Sprintf("it reached its lifetime of %s (ttl, at most %s=%s)", b.expires.Sub(b.created).Round(time.Second), EnvSessionMax, s.lim.SessionMax)
		case b.active == 0 && now.Sub(b.lastUsed) >= s.lim.SessionIdle:
			why = fmt.Sprintf("it was idle for %s (%s)", s.lim.SessionIdle, EnvSessionIdle)
		default:
			continue
		}
		s.forgetLocked(b, "destroyed because "+why)
		victims = append(victims, b)
		reasons = append(reasons, why)
	}
	s.mu.Unlock()
	for i, b := range victims {
		s.destroyAsync(b, reasons[i])
	}
}

// boxesSorted returns a snapshot of the table, oldest first.
func (s *Server) boxesSorted() []box {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]box, 0, len(s.boxes))
	for _, b := range s.boxes {
		out = append(out, *b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].created.Before(out[j].created) })
	return out
}

func (s *Server) limitsInfo() LimitsInfo {
	return LimitsInfo{
		SessionIdleS: int64(s.lim.SessionIdle / time.Second), SessionMaxS: int64(s.lim.SessionMax / time.Second),
		MaxInflight: s.lim.MaxInflight, MemCeilingMiB: s.lim.MemCeilingMiB, OutputCapBytes: OutputCapBytes,
		MaxSandboxes: s.lim.MaxSandboxes, TotalMemMiB: s.lim.TotalMemMiB,
		MaxSnapshots: s.lim.MaxSnapshots, SnapshotMiB: s.lim.SnapshotMiB,
	}
}

// reserve takes a place for one sandbox of mem MiB under the session caps
// (MVM_MCP_MAX_SANDBOXES, MVM_MCP_TOTAL_MEM_MIB) before it boots, so that
// sandboxes still booting count and concurrent calls cannot all pass the
// check. The returned func gives the place back; it is safe to call more
// than once.
func (s *Server) reserve(mem int) (func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.liveN >= s.lim.MaxSandboxes {
		return nil, fmt.Errorf("refused: this server already has %d sandboxes (booting ones and transient runs included), the most it allows (%s=%d); "+
			"sandbox_destroy one you no longer need (sandbox_list shows them); nothing was started",
			s.liveN, EnvMaxSandboxes, s.lim.MaxSandboxes)
	}
	if s.liveMem+mem > s.lim.TotalMemMiB {
		return nil, fmt.Errorf("refused: %d MiB more would take this server's sandboxes to %d MiB, past their total of %d MiB (%s=%d); "+
			"ask for less memory_mib or sandbox_destroy a sandbox you no longer need; nothing was started",
			mem, s.liveMem+mem, s.lim.TotalMemMiB, EnvTotalMemMiB, s.lim.TotalMemMiB)
	}
	s.liveN++
	s.liveMem += mem
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.liveN--
			s.liveMem -= mem
			s.mu.Unlock()
		})
	}, nil
}

// checkImage keeps MCP to templates and built images (by name or
// digest): a host directory would have the server read host files into an
// image, and a relative name like "agent" used to build ./agent of the
// server's working directory. It returns the memory the image's manifest
// asks for (0 for none).
func (s *Server) checkImage(t string) (int, error) {
	if t == "" {
		return 0, nil
	}
	// an OCI reference may contain "/" (ghcr.io/org/app); the server never
	// builds a directory (NoBuildDir), and ResolveImage decides whether a
	// registry may be reached
	// (a tag or a digest must be named: "a/b" or "python/.." is refused)
	ref := oci.IsReference(t) && strings.ContainsAny(t, ":@") && !strings.HasPrefix(t, "/") && !strings.Contains(t, "..")
	if len(t) <= 256 && (ref || !strings.ContainsAny(t, "/\\\x00")) && !strings.ContainsAny(t, "\\\x00") && !strings.HasPrefix(t, ".") && !strings.HasPrefix(t, "~") && s.resolveImage != nil {
		m, err := s.resolveImage(t)
		if err == nil {
			return m, nil
		}
		if ref {
			return 0, err
		}
	}
	return 0, fmt.Errorf("template %q is not a template or a built image: give a template (minimal, python, node, debian, ...) or the name or digest of an image built with mvmctl build; host directories are not accepted through MCP", t)
}

// checkNetwork turns an allowlist into the sandbox's network policy and
// the profile that admits it: no allowlist is the restrictive profile with
// no network device; an allowlist (HOST[:PORT] entries, port 443 by
// default; presets and "unrestricted" are not offered to models) moves the
// sandbox to the standard profile, which allows allowlisted egress and
// still no caller env or host directories (MCP offers neither).
func checkNetwork(allow []string) (netpolicy.Config, plan.Profile, error) {
	if len(allow) == 0 {
		return netpolicy.Config{Mode: netpolicy.None, Origin: netpolicy.OriginMCP}, Profile, nil
	}
	// OriginMCP: the runtime's policy never grants an MCP client the
	// host's loopback (host.mvm.internal) or private addresses.
	cfg := netpolicy.Config{Mode: netpolicy.Allowlist, Origin: netpolicy.OriginMCP}
	for _, a := range allow {
		r, err := netpolicy.ParseAllow(a)
		if err != nil {
			return cfg, "", fmt.Errorf("refused: %v", err) // names the entry
		}
		cfg.Allow = append(cfg.Allow, r)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, "", fmt.Errorf("refused: allow: %v", err)
	}
	req := plan.Request{Network: plan.Network{Mode: plan.NetAllowlist, Allow: cfg.Strings()}}
	if err := plan.Standard.Validate(req); err != nil {
		return cfg, "", fmt.Errorf("refused: allow: %v", err)
	}
	return cfg, plan.Standard, nil
}

func (s *Server) sandboxCreate(ctx context.Context, a CreateArgs) (SandboxInfo, string, error) {
	var zero SandboxInfo
	var mem int
	var err error
	if a.Snapshot != "" {
		mem, err = s.cloneArgs(a)
	} else {
		mem, err = s.sizing(a.Template, a.MemoryMiB)
	}
	if err != nil {
		return zero, "", err
	}
	cpus := a.CPUs
	if cpus == 0 {
		cpus = 1
	}
	if cpus < 1 || cpus > s.maxCPUs {
		return zero, "", fmt.Errorf("cpus %d: must be between 1 and %d on this host", a.CPUs, s.maxCPUs)
	}
	ttl := a.TTL.D()
	if ttl == 0 {
		ttl = s.lim.SessionMax
	}
	if ttl < time.Second {
		return zero, "", fmt.Errorf("ttl %s: must be at least 1s", ttl)
	}
	if ttl > s.lim.SessionMax {
		return zero, "", fmt.Errorf("ttl %s exceeds the longest lifetime this server allows, %s (%s)", ttl, s.lim.SessionMax, EnvSessionMax)
	}
	netCfg, profile, err := checkNetwork(a.Allow)
	if err != nil {
		return zero, "", err
	}
	free, err := s.reserve(mem)
	if err != nil {
		return zero, "", err
	}
	handle := "mcp-" + sandbox.NewID()[:8]
	t0, start := s.now(), time.Now()
	up := runtime.UpOptions{
		Name: handle, Image: a.Template, CPUs: cpus, MemoryMiB: mem, TTL: ttl,
		Transient:  true, // held by this server: it dies with it
		RunProfile: string(profile),
		Network:    netCfg,
		NoBuildDir: true,
	}
	template := a.Template
	if a.Snapshot != "" {
		// The snapshot's plan (profile, network, resources) is re-admitted
		// by the runtime; what it was admitted with is read back below.
		up = runtime.UpOptions{Name: handle, FromSnapshot: a.Snapshot, TTL: ttl, Transient: true}
		template = "snapshot " + a.Snapshot
	}
	sb, err := s.rt.Up(ctx, up)
	if err != nil {
		free()
		return zero, "", toolError(op{boot: true, template: template}, err)
	}
	now := s.now()
	b := &box{
		handle: sb.Name, id: sb.ID, template: templateName(template), cpus: cpus, mem: mem,
		created: now, expires: t0.Add(ttl), hold: sb.Hold, lastUsed: now, free: free,
		network: "unknown", profile: "unknown",
	}
	if sb.State != nil {
		b.image = sb.State.Image.Name
	}
	if p := sb.Plan; p != nil {
		b.network, b.allow, b.profile, b.imageProfile = string(p.Network.Mode), p.Network.Allow, string(p.RunProfile), p.ImageProfile
		if a.Snapshot != "" {
			b.cpus = p.Resources.CPUs
		}
	}
	s.mu.Lock()
	closing := s.closing
	if !closing {
		s.boxes[b.handle] = b
	}
	s.mu.Unlock()
	if closing {
		s.destroy(b, "server shutting down")
		return zero, "", errors.New("the mvm MCP server is shutting down; the sandbox was destroyed")
	}
	info := s.info(*b)
	info.Status = sandbox.Running
	info.BootMS = time.Since(start).Milliseconds()
	text := fmt.Sprintf("created sandbox %s (template %s, %d cpu, %d MiB, %s, profile %s) in %s\nexpires at %s; destroyed after %s idle\npass \"sandbox\": %q to run_command, run_code and files_*",
		info.Sandbox, info.Template, cpus, mem, networkText(info), info.RunProfile, ms(info.BootMS), info.ExpiresAt.Format(time.RFC3339), s.lim.SessionIdle, info.Sandbox)
	return info, text, nil
}

// networkText says in words what network a sandbox was admitted with.
func networkText(i SandboxInfo) string {
	switch i.Network {
	case string(plan.NetNone):
		return "no network"
	case string(plan.NetAllowlist):
		return "network egress only to " + strings.Join(i.Allow, ", ")
	}
	return "network " + i.Network
}

func templateName(t string) string {
	if t == "" {
		return "minimal"
	}
	return t
}

func (s *Server) info(b box) SandboxInfo {
	return SandboxInfo{
		Sandbox: b.handle, SandboxID: b.id, Template: b.template, Image: b.image,
		CPUs: b.cpus, MemoryMiB: b.mem, Network: b.network, Allow: b.allow, RunProfile: b.profile, ImageProfile: b.imageProfile,
		Created: b.created.UTC(), ExpiresAt: b.expires.UTC(),
		IdleSeconds: int64(s.now().Sub(b.lastUsed) / time.Second),
		IdleLimitS:  int64(s.lim.SessionIdle / time.Second),
	}
}

func (s *Server) sandboxList(ctx context.Context, _ ListArgs) (ListResult, string, error) {
	res := ListResult{Sandboxes: []SandboxInfo{}, Limits: s.limitsInfo()}
	for _, b := range s.boxesSorted() {
		info := s.info(b)
		if b.active > 0 {
			info.IdleSeconds = 0
		}
		st, err := s.rt.Get(b.id)
		switch {
		case errors.Is(err, runtime.ErrNotFound):
			// Removed behind our back (ttl passed in the supervisor, or
			// `mvmctl down`): forget it.
			s.mu.Lock()
			cur, ok := s.boxes[b.handle]
			if ok && cur.id == b.id {
				s.forgetLocked(cur, "it was stopped outside this server or its ttl passed")
			}
			s.mu.Unlock()
			if ok && cur.id == b.id {
				if cur.hold != nil {
					cur.hold.Close()
				}
				cur.free()
			}
			continue
		case err != nil:
			info.Status = "unknown: " + describe(err)
		default:
			info.Status = st.Status
			if st.Reason != "" {
				info.Status += ": " + st.Reason
			}
		}
		res.Sandboxes = append(res.Sandboxes, info)
	}
	s.mu.Lock()
	res.Inflight, res.Live, res.MemInUseMiB = s.inflight, s.liveN, s.liveMem
	s.mu.Unlock()
	var b strings.Builder
	if len(res.Sandboxes) == 0 {
		b.WriteString("no sandboxes (sandbox_create makes one)\n")
	}
	for _, i := range res.Sandboxes {
		fmt.Fprintf(&b, "%s  %s  template=%s  %d MiB  idle %ds of %ds  expires %s\n",
			i.Sandbox, i.Status, i.Template, i.MemoryMiB, i.IdleSeconds, i.IdleLimitS, i.ExpiresAt.Format(time.RFC3339))
	}
	fmt.Fprintf(&b, "tool calls running: %d of %d; sandboxes alive (booting and transient included): %d of %d, %d of %d MiB; memory ceiling per sandbox %d MiB",
		res.Inflight, s.lim.MaxInflight, res.Live, s.lim.MaxSandboxes, res.MemInUseMiB, s.lim.TotalMemMiB, s.lim.MemCeilingMiB)
	return res, b.String(), nil
}

func (s *Server) sandboxDestroy(ctx context.Context, a SandboxArgs) (DestroyResult, string, error) {
	if a.Sandbox == "" {
		return DestroyResult{}, "", errors.New(`"sandbox" is required`)
	}
	s.mu.Lock()
	b, ok := s.boxes[a.Sandbox]
	if !ok {
		for _, c := range s.boxes {
			if c.id == a.Sandbox {
				b, ok = c, true
			}
		}
	}
	why, gone := s.gone[a.Sandbox]
	if ok {
		s.forgetLocked(b, "it was destroyed by sandbox_destroy")
	}
	s.mu.Unlock()
	if !ok {
		if gone {
			return DestroyResult{Sandbox: a.Sandbox, Destroyed: false}, fmt.Sprintf("sandbox %s was already gone: %s", a.Sandbox, why), nil
		}
		return DestroyResult{}, "", fmt.Errorf("unknown sandbox %q: this server only destroys sandboxes it created (sandbox_list shows them)", a.Sandbox)
	}
	if err := s.destroy(b, "sandbox_destroy"); err != nil {
		return DestroyResult{}, "", toolError(op{handle: b.handle}, err)
	}
	return DestroyResult{Sandbox: b.handle, Destroyed: true}, "destroyed sandbox " + b.handle, nil
}
