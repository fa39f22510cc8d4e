package workloadfile

import (
	"context"
	"fmt"
	"time"

	"github.com/veil-mesh/veil/internal/filewatch"
)

// Watch reads the file at path now and then every `every`, and calls onChange with the
// parse of each new version (see filewatch.Watch). A failure to read the file is
// delivered the same way, a nil *File and the error, once until it changes. A caller that
// gets an error should keep what it had. Watch returns when ctx is done; onChange runs in
// Watch's goroutine.
func Watch(ctx context.Context, path string, every time.Duration,
	onChange func(*File, []error, error)) {
	filewatch.Watch(ctx, path, every, func(data []byte, err error) {
		if err != nil {
			onChange(nil, nil, fmt.Errorf("reading workload file: %w", err))
			return
		}
		onChange(parseNamed(path, data))
	})
}
