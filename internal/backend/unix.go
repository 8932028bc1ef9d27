package backend

import (
	"context"
	"fmt"
	"net"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// MaxSocketPath is the longest unix socket path dialled as it is: a
// sockaddr_un holds 108 bytes with the terminating NUL, less slack. It is
// the one definition of the limit; longer paths go through DialUnix.
const MaxSocketPath = 104

// DialUnix connects to the unix socket name inside dir, however long dir
// is: a path too long for a socket address is reached as
// /proc/self/fd/<fd>/name with dir held open. VMMs bind their sockets by
// relative name in their working directory (the sandbox directory), so no
// socket path mvm uses is limited by the length of MVM_STATE_DIR.
func DialUnix(ctx context.Context, dir, name string) (net.Conn, error) {
	var d net.Dialer
	full := filepath.Join(dir, name)
	if len(full) <= MaxSocketPath {
		return d.DialContext(ctx, "unix", full)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", full, err)
	}
	defer unix.Close(fd)
	return d.DialContext(ctx, "unix", fmt.Sprintf("/proc/self/fd/%d/%s", fd, name))
}
