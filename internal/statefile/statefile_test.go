package statefile

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteMakesDirAndFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", "state.json")
	if err := Write(path, map[string]int{"x": 1}); err != nil {
		t.Fatal(err)
	}
	var got map[string]int
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &got); err != nil || got["x"] != 1 {
		t.Fatalf("read back %q: %v; want {\"x\": 1}", b, err)
	}
	for p, want := range map[string]os.FileMode{path: FileMode, filepath.Dir(path): DirMode | os.ModeDir} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode() & (os.ModePerm | os.ModeDir); got != want {
			t.Errorf("%s: got mode %v; want %v", p, got, want)
		}
	}
}

// A file that was world-readable (an older version, a hand edit) or
// truncated by a crash becomes a whole 0600 file, and nothing else is
// left in the directory.
func TestWriteBytesReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ipsec.key")
	if err := os.WriteFile(path, []byte(`{"private_k`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteBytes(path, []byte("new\n")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	st, _ := os.Stat(path)
	if string(b) != "new\n" || st.Mode().Perm() != FileMode {
		t.Errorf("got %q mode %v; want %q mode %v", b, st.Mode().Perm(), "new\n", FileMode)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after the write; want only the file", len(entries))
	}
}

// A write that fails leaves the old file whole and no temporary file.
func TestWriteFailureKeepsOld(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := WriteBytes(path, []byte("old")); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, map[string]any{"bad": make(chan int)}); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Write of an unencodable value: %v; want an error naming %s", err, path)
	}
	blocked := filepath.Join(path, "below") // a file where a directory should be
	if err := WriteBytes(blocked, []byte("x")); err == nil {
		t.Error("WriteBytes below a regular file: got no error")
	}
	b, _ := os.ReadFile(path)
	entries, _ := os.ReadDir(dir)
	if string(b) != "old" || len(entries) != 1 {
		t.Errorf("after failed writes: file %q, %d entries; want \"old\" and 1", b, len(entries))
	}
}
