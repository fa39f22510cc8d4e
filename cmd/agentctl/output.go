package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"go.yaml.in/yaml/v3"
)

var outputFormats = []string{"table", "json", "yaml"}

func (o *options) checkOutput() error {
	for _, f := range outputFormats {
		if o.output == f {
			return nil
		}
	}
	return fmt.Errorf("--output %q: want %s", o.output, strings.Join(outputFormats, ", "))
}

// print writes v in the chosen format; table renders the table format.
func (o *options) print(w io.Writer, v any, table func(io.Writer) error) error {
	switch o.output {
	case "json":
		return printJSON(w, v)
	case "yaml":
		return printYAML(w, v)
	}
	return table(w)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printYAML writes v as YAML with the same field names and order as its JSON: it goes
// through JSON (the API's own encoding, json tags and all), which YAML reads as a document
// whose mappings keep their order.
func printYAML(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("converting to YAML: %w", err)
	}
	blockStyle(&doc)
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return err
	}
	return enc.Close()
}

// blockStyle drops the flow style and quotes that n has from being read as JSON; the
// encoder adds quotes back where a plain scalar would read as another type.
func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

// ago is how long before now t was, to the second.
func ago(t time.Time) string { return time.Since(t).Round(time.Second).String() }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
