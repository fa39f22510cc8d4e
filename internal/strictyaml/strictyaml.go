// Package strictyaml decodes the YAML files operators write for veil, refusing fields it
// does not know: a misspelt key must be reported, not silently ignored.
package strictyaml

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Decode decodes data into v, rejecting unknown fields. what names the file in errors
// ("policy file"). The decoder names the Go type an unknown field was not found in;
// explain rewrites each of its messages into what the person editing the file needs,
// such as the section's known fields.
func Decode(data []byte, v any, what string, explain func(msg string) string) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(v)
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}

	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("parsing %s: %w", what, err)
	}
	msgs := make([]string, len(te.Errors))
	for i, m := range te.Errors {
		msgs[i] = explain(m)
	}
	return fmt.Errorf("parsing %s: %s", what, strings.Join(msgs, "; "))
}
