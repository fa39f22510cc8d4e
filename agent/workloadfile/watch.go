package workloadfile

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"time"
)

// Watch reads the file at path now and then every `every`, and calls onChange with the
// parse of each new version: the first time, and whenever the content hash differs from
// the last one seen. A failure to read the file is delivered the same way (a nil *File
// and the error) once, until the file changes again. A caller that gets an error should
// keep what it had. Watch returns when ctx is done; onChange runs in Watch's goroutine.
//
// Watch polls instead of using inotify on purpose. Editors and scripts replace the file by
// writing a temporary file and renaming it over the old one, which ends an inotify watch
// on the old inode and needs the directory watched and the events filtered instead; a
// poll of a small file every second or two sees every such replacement, needs no extra
// dependency, and works the same on every file system, including the ones Kubernetes
// mounts ConfigMaps on (those swap a symlink).
func Watch(ctx context.Context, path string, every time.Duration,
	onChange func(*File, []error, error)) {
	var last [sha256.Size]byte
	first := true
	check := func() {
		sum, f, problems, err := readAndParse(path)
		if !first && sum == last {
			return
		}
		first, last = false, sum
		onChange(f, problems, err)
	}

	check()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			check()
		}
	}
}

// readAndParse returns the content hash with the parse. For a read error the hash is that
// of the error text, so the same failure is reported once, not on every poll.
func readAndParse(path string) ([sha256.Size]byte, *File, []error, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		err = fmt.Errorf("reading workload file: %w", err)
		return sha256.Sum256([]byte(err.Error())), nil, nil, err
	}

	f, problems, err := parseNamed(path, data)
	return sha256.Sum256(data), f, problems, err
}
