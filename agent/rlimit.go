package agent

import (
	"golang.org/x/sys/unix"
)

// wantOpenFiles is the open-file limit the agent asks for: every proxied connection holds
// two or three descriptors, and a node may carry hundreds of thousands of connections.
// Go lifts the soft limit to the hard one by itself; raising the hard limit needs
// CAP_SYS_RESOURCE, which a privileged DaemonSet has.
const wantOpenFiles = 1 << 20

// raiseFileLimit raises the open-file limit as far as it may and returns what it got.
func raiseFileLimit() (uint64, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Max < wantOpenFiles {
		want := unix.Rlimit{Cur: wantOpenFiles, Max: wantOpenFiles}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &want); err == nil {
			return wantOpenFiles, nil
		}
	}
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Cur, nil
}
