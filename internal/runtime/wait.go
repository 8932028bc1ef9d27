package runtime

import (
	"context"
	"fmt"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// waitPoll is how often Wait looks at a sandbox that is not ready yet.
const waitPoll = 100 * time.Millisecond

// Wait returns once the sandbox is running and its agent answers. It fails
// with a guest error (reason "failed") when the sandbox stopped or failed,
// and with a timeout (reason "not_ready") when timeout passed first; both
// come with the last state seen.
func (r *Runtime) Wait(ctx context.Context, nameOrID string, timeout time.Duration) (*sandbox.State, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := r.Get(nameOrID)
		if err != nil {
			return nil, err
		}
		switch {
		case st.Status == sandbox.Running:
			cctx, cancel := context.WithDeadline(ctx, deadline.Add(time.Second))
			c, _, err := r.Connect(cctx, nameOrID)
			cancel()
			if err == nil {
				c.Close()
				return st, nil
			}
		case !sandbox.Active(st.Status):
			return st, errdefs.WithReason(errdefs.KindGuest, errdefs.ReasonFailed,
				fmt.Errorf("%s is %s: %s", st.Name, st.Status, st.Reason))
		}
		if !time.Now().Before(deadline) {
			return st, errdefs.WithReason(errdefs.KindTimeout, errdefs.ReasonNotReady,
				fmt.Errorf("%s not ready after %s (state %s)", st.Name, timeout, st.Status))
		}
		t := time.NewTimer(min(waitPoll, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return st, errdefs.Canceled(fmt.Errorf("wait for %s: %w", st.Name, ctx.Err()))
		case <-t.C:
		}
	}
}
