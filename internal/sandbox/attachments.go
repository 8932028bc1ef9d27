package sandbox

import (
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/secret"
)

// AttachmentsFile lists a sandbox's host directories, volumes and secret
// references (names and targets, never values).
const AttachmentsFile = "attachments.json"

// Attachments are what a sandbox was given besides its image.
type Attachments struct {
	Mounts  []plan.Mount       `json:"mounts"`
	Volumes []plan.VolumeMount `json:"volumes"`
	Secrets []secret.Ref       `json:"secrets"`
}

// Empty reports whether there is nothing attached.
func (a *Attachments) Empty() bool {
	return a == nil || len(a.Mounts)+len(a.Volumes)+len(a.Secrets) == 0
}
