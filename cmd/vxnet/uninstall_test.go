package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestIsStateFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"state.json", true}, {"ipam.json", true}, {"ipsec.key", true}, {"lease", true},
		{".state.json123456789", true}, {".lease42", true},
		{".state.json", false}, {".state.jsonx1", false}, {"state.json.bak", false}, {"notes.txt", false}, {"", false},
	} {
		if got := isStateFile(tc.name); got != tc.want {
			t.Errorf("isStateFile(%q) = %v; want %v", tc.name, got, tc.want)
		}
	}
}

// removeStateDir removes vxnet's files and the directory, but keeps a
// directory that holds anything else, and that file.
func TestRemoveStateDir(t *testing.T) {
	for _, tc := range []struct {
		files    []string
		wantLeft string
	}{
		{[]string{"state.json", "lease", ".ipam.json77"}, "[]"},
		{[]string{"state.json", "ca.pem"}, "[ca.pem]"},
		{nil, "[]"},
	} {
		dir := filepath.Join(t.TempDir(), "vxnet")
		os.Mkdir(dir, 0o700)
		for _, f := range tc.files {
			if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		_, left, err := removeStateDir(dir)
		if err != nil || fmt.Sprint(left) != tc.wantLeft {
			t.Errorf("files %v: left %v, %v; want %s", tc.files, left, err, tc.wantLeft)
		}
		_, statErr := os.Stat(dir)
		if gone := os.IsNotExist(statErr); gone != (tc.wantLeft == "[]") {
			t.Errorf("files %v: directory gone = %v", tc.files, gone)
		}
	}
	if removed, left, err := removeStateDir(filepath.Join(t.TempDir(), "none")); err != nil || len(removed)+len(left) != 0 {
		t.Errorf("a missing directory: %v %v %v; want nothing", removed, left, err)
	}
}
