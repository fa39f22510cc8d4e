// Package filewatch reports each new version of a file that veil reads its
// configuration from. It holds no open file between polls and starts no goroutine:
// Watch runs in the caller's goroutine until the caller's context is done.
package filewatch

import (
	"context"
	"crypto/sha256"
	"os"
	"time"
)

// Watch reads the file at path now and then every `every`, and calls onChange with the
// content of each new version: the first time, and whenever it differs from the last
// one seen. A failure to read the file is delivered the same way (nil data and the
// error) once, until the file or the failure changes.
//
// Watch polls instead of using inotify on purpose. Editors and scripts replace the file by
// writing a temporary file and renaming it over the old one, which ends an inotify watch
// on the old inode and needs the directory watched and the events filtered instead; a
// poll of a small file every second or two sees every such replacement, needs no extra
// dependency, and works the same on every file system, including the ones Kubernetes
// mounts ConfigMaps on (those swap a symlink).
func Watch(ctx context.Context, path string, every time.Duration,
	onChange func(data []byte, err error)) {
	var last [sha256.Size]byte
	first := true
	check := func() {
		data, err := os.ReadFile(path)
		sum := sha256.Sum256(data)
		if err != nil {
			sum = sha256.Sum256([]byte(err.Error()))
		}
		if !first && sum == last {
			return
		}
		first, last = false, sum
		onChange(data, err)
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
