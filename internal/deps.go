//go:build tools

// Package internal pins modules that packages of this repository import, so
// that parallel work does not race on go.mod.
package internal

import (
	_ "github.com/creack/pty"
	_ "github.com/gofrs/flock"
	_ "github.com/gowebpki/jcs"
	_ "github.com/hashicorp/yamux"
	_ "github.com/modelcontextprotocol/go-sdk/mcp"
	_ "github.com/pelletier/go-toml/v2"
	_ "github.com/pierrec/lz4/v4"
	_ "github.com/spf13/cobra"
	_ "golang.org/x/sys/unix"
	_ "golang.org/x/term"
	_ "google.golang.org/grpc"
	_ "google.golang.org/protobuf/proto"
)
