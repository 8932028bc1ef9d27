// Package schema embeds the versioned JSON Schemas of mvm's documents.
package schema

import _ "embed"

// WorkloadIRv1 is schema/workload-ir.v1.json.
//
//go:embed workload-ir.v1.json
var WorkloadIRv1 []byte
