package redirect

import "errors"

var (
	// ErrNoOriginalDst means the kernel kept no record of where an accepted connection was
	// going: it did not come through the connect hooks, or the record was already taken.
	ErrNoOriginalDst = errors.New("no original destination recorded")

	// ErrUnsupported means the running kernel lacks a program type or helper veil needs.
	ErrUnsupported = errors.New("kernel feature unsupported")
)
