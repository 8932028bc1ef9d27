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
	"time"

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
	b.lastUsed = time.Now()
	return b, nil
}

func (s *Server) release(b *box) {
	s.mu.Lock()
	b.active--
	b.lastUsed = time.Now()
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
		s.reap(time.Now())
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
		s.destroyAsync(b.handle, b.id, b.hold, reasons[i])
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
	}
}

// checkNetwork turns an allowlist into the sandbox's network policy and
// the profile that admits it: no allowlist is the restrictive profile with
// no network device; an allowlist (HOST[:PORT] entries, port 443 by
// default; presets and "unrestricted" are not offered to models) moves the
// sandbox to the standard profile, which allows allowlisted egress and
// still no caller env or host directories (MCP offers neither).
func checkNetwork(allow []string) (netpolicy.Config, plan.Profile, error) {
	if len(allow) == 0 {
		return netpolicy.Config{Mode: netpolicy.None}, Profile, nil
	}
	cfg := netpolicy.Config{Mode: netpolicy.Allowlist}
	for _, a := range allow {
		r, err := netpolicy.ParseAllow(a)
		if err != nil {
			return cfg, "", fmt.Errorf("refused: allow %q: %v", a, err)
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
	if err := checkTemplate(a.Template); err != nil {
		return zero, "", err
	}
	mem, err := s.memory(a.MemoryMiB, a.Template)
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
	handle := "mcp-" + sandbox.NewID()[:8]
	t0 := time.Now()
	sb, err := s.rt.Up(ctx, runtime.UpOptions{
		Name: handle, Image: a.Template, CPUs: cpus, MemoryMiB: mem, TTL: ttl,
		Transient: true, // held by this server: it dies with it
		Profile:   string(profile),
		Network:   netCfg,
	})
	if err != nil {
		return zero, "", upError(a.Template, err)
	}
	now := time.Now()
	b := &box{
		handle: sb.Name, id: sb.ID, template: templateName(a.Template), cpus: cpus, mem: mem,
		created: now, expires: t0.Add(ttl), hold: sb.Hold, lastUsed: now,
	}
	if sb.State != nil {
		b.image = sb.State.Image.Name
	}
	s.mu.Lock()
	closing := s.closing
	if !closing {
		s.boxes[b.handle] = b
	}
	s.mu.Unlock()
	if closing {
		s.destroy(b.handle, b.id, b.hold, "server shutting down")
		return zero, "", errors.New("the mvm MCP server is shutting down; the sandbox was destroyed")
	}
	info := s.info(*b)
	info.Status = sandbox.Running
	info.BootMS = time.Since(t0).Milliseconds()
	text := fmt.Sprintf("created sandbox %s (template %s, %d cpu, %d MiB, no network) in %s\nexpires at %s; destroyed after %s idle\npass \"sandbox\": %q to run_command, run_code and files_*",
		info.Sandbox, info.Template, cpus, mem, ms(info.BootMS), info.ExpiresAt.Format(time.RFC3339), s.lim.SessionIdle, info.Sandbox)
	return info, text, nil
}

// checkTemplate keeps MCP to named templates and built images: a
// directory path would have the server read host files into an image.
func checkTemplate(t string) error {
	if len(t) > 256 || strings.ContainsAny(t, "/\\\x00") || strings.HasPrefix(t, ".") || strings.HasPrefix(t, "~") {
		return fmt.Errorf("template %q: give a template (minimal, python, node, debian, ...) or the name or digest of an image built with mvmctl build; build directories are not accepted through MCP", t)
	}
	return nil
}

func templateName(t string) string {
	if t == "" {
		return "minimal"
	}
	return t
}

// upError explains a failed boot.
func upError(template string, err error) error {
	if errors.Is(err, context.Canceled) {
		return errors.New("cancelled before the sandbox was ready; nothing was left running")
	}
	return fmt.Errorf("could not start a sandbox (template %s): %s", templateName(template), describe(err))
}

func (s *Server) info(b box) SandboxInfo {
	return SandboxInfo{
		Sandbox: b.handle, SandboxID: b.id, Template: b.template, Image: b.image,
		CPUs: b.cpus, MemoryMiB: b.mem, Network: "none", Profile: Profile,
		Created: b.created.UTC(), ExpiresAt: b.expires.UTC(),
		IdleSeconds: int64(time.Since(b.lastUsed) / time.Second),
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
			if ok && cur.id == b.id && cur.hold != nil {
				cur.hold.Close()
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
	res.Inflight = s.inflight
	s.mu.Unlock()
	var b strings.Builder
	if len(res.Sandboxes) == 0 {
		b.WriteString("no sandboxes (sandbox_create makes one)\n")
	}
	for _, i := range res.Sandboxes {
		fmt.Fprintf(&b, "%s  %s  template=%s  %d MiB  idle %ds of %ds  expires %s\n",
			i.Sandbox, i.Status, i.Template, i.MemoryMiB, i.IdleSeconds, i.IdleLimitS, i.ExpiresAt.Format(time.RFC3339))
	}
	fmt.Fprintf(&b, "tool calls running: %d of %d; memory ceiling %d MiB", res.Inflight, s.lim.MaxInflight, s.lim.MemCeilingMiB)
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
	if err := s.destroy(b.handle, b.id, b.hold, "sandbox_destroy"); err != nil {
		return DestroyResult{}, "", fmt.Errorf("destroy %s: %s", b.handle, describe(err))
	}
	return DestroyResult{Sandbox: b.handle, Destroyed: true}, "destroyed sandbox " + b.handle, nil
}
