// Command mvmctl is the mvm command line: it builds images, boots microVM
// sandboxes, runs commands in them and records evidence of what ran.
package main

import (
	"os"

	"github.com/mvm-sandbox/mvm/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
