package supervisor

import (
	"io"
	"log"
	"os"
	"strconv"

	"github.com/mvm-sandbox/mvm/internal/caplog"
)

// ConsoleLog is the guest's serial console, written by the supervisor
// (capped and rotated to ConsoleLog+".1"), whatever the backend.
const ConsoleLog = "console.log"

// ConsoleLogMaxEnv overrides the console log cap (bytes per generation).
const ConsoleLogMaxEnv = "MVM_CONSOLE_LOG_MAX"

// DefaultConsoleLogMax is the console log cap: two generations of 4 MiB
// at most are on disk.
const DefaultConsoleLogMax = 4 << 20

func consoleLogMax() int64 {
	if v, err := strconv.ParseInt(os.Getenv(ConsoleLogMaxEnv), 10, 64); err == nil && v >= 4096 {
		return v
	}
	return DefaultConsoleLogMax
}

// startConsoleLog returns the write end of a pipe for the VMM's serial
// console; what arrives is copied into a capped, rotating log at path
// until every write end is closed.
func startConsoleLog(path string, max int64) (*os.File, error) {
	lw, err := caplog.Create(path, max)
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		lw.Close()
		return nil, err
	}
	go func() {
		defer r.Close()
		defer lw.Close()
		if _, err := io.Copy(lw, r); err != nil {
			log.Printf("console log: %v", err)
		}
	}()
	return w, nil
}
