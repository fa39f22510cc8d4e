package main

import (
	"bytes"
	"testing"
)

func TestYAMLKeepsJSONNamesAndOrder(t *testing.T) {
	v := struct {
		Zeta  string   `json:"zeta"`
		Alpha int      `json:"alphaCount"`
		Word  string   `json:"word"`
		List  []string `json:"list"`
		Empty []string `json:"empty"`
	}{Zeta: "z", Alpha: 3, Word: "true", List: []string{"a", "b"}, Empty: []string{}}
	var b bytes.Buffer
	if err := printYAML(&b, v); err != nil {
		t.Fatal(err)
	}
	want := "zeta: z\nalphaCount: 3\nword: \"true\"\nlist:\n  - a\n  - b\nempty: []\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestOutputFormatChecked(t *testing.T) {
	formats := map[string]bool{
		"table": true, "json": true, "yaml": true, "xml": false, "": false,
	}
	for f, ok := range formats {
		if err := (&options{output: f}).checkOutput(); (err == nil) != ok {
			t.Errorf("checkOutput(%q) = %v", f, err)
		}
	}
}
