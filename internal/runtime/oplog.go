package runtime

import (
	"fmt"

	"github.com/mvm-sandbox/mvm/internal/evidence"
)

// auditOp records a guest operation (file transfer or change, background
// process, console) in the audit chain. Guest paths are data-plane: only
// their sha256 goes into evidence, with counts and policy tags.
func (r *Runtime) auditOp(nameOrID, kind string, fields map[string]any) error {
	_, err := r.auditOpID(nameOrID, kind, fields)
	return err
}

// auditOpID is auditOp returning the entry's id.
func (r *Runtime) auditOpID(nameOrID, kind string, fields map[string]any) (string, error) {
	id := nameOrID
	if st, err := r.Get(nameOrID); err == nil {
		id = st.ID
	}
	aid, err := r.Audit(kind, id, fields)
	if err != nil {
		return "", fmt.Errorf("the operation ran but its audit entry failed: %w", err)
	}
	return aid, nil
}

// pathHash is the evidence form of a guest or host path.
func pathHash(p string) string { return evidence.SHA256Hex([]byte(p)) }
