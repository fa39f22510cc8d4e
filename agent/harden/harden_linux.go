// Package harden keeps a veil process's private keys out of the places a crash or a
// debugger could copy them to. veil-agent holds every workload's private key, and veil-ca
// its signing key, in memory; a core dump would write them to disk, wherever the node's
// core_pattern points (often a crash collector that ships cores off the machine).
//
// Process is called first thing in main, before any key exists. Both settings last for
// the life of the process, which never calls execve (execve would make it dumpable again).
package harden

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Process turns off core dumps for the calling process and makes it non-dumpable:
//
//   - RLIMIT_CORE 0, soft and hard, so nothing in the process can turn core files on
//     again. A core_pattern that pipes to a program ignores the limit, which is why the
//     flag below is set too.
//   - PR_SET_DUMPABLE 0: no core dump of any kind, also not a piped one, and only a
//     process with CAP_SYS_PTRACE may attach to it or read its memory through /proc
//     (ptrace(2), "Ptrace access mode checking"). Root debugging as root still works.
//
// Both are always permitted to an unprivileged process, so an error means something
// forbids them (a seccomp filter, say); the caller should refuse to run.
func Process() error {
	var errs []error
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		errs = append(errs, fmt.Errorf("setting RLIMIT_CORE to 0: %w", err))
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		errs = append(errs, fmt.Errorf("clearing the dumpable flag: %w", err))
	}
	return errors.Join(errs...)
}

// LogFieldDumpable is the log field that reports Dumpable at start.
const LogFieldDumpable = "dumpable"

// Dumpable reads the calling process's dumpable flag back, for the start-up log line
// that lets an operator (and the end-to-end tests) see the setting took.
func Dumpable() (bool, error) {
	v, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil {
		return false, fmt.Errorf("reading the dumpable flag: %w", err)
	}
	return v != 0, nil
}
