package tlsengine

import "fmt"

// UnmarshalText reads a Direction back from its name, so status JSON round-trips.
func (d *Direction) UnmarshalText(b []byte) error {
	for i, name := range directionNames {
		if name == string(b) {
			*d = Direction(i)
			return nil
		}
	}
	return fmt.Errorf("unknown direction %q", b)
}
