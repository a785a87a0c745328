// Package statefile writes the files a node keeps in its state directory
// (VXNET_STATE_DIR): the driver's networks and endpoints, the addresses
// IPAM holds, the IPsec key and its epoch, the etcd lease ID. Each is
// read back by the next run, possibly after a crash or a power cut, so
// each is written the one way that survives both: the new content goes to
// a temporary file in the same directory, which is synced, then renamed
// over the old file, and the directory is synced so the rename itself is
// on disk. A reader sees either the whole old file or the whole new one,
// never a truncated or empty one (without the syncs, ext4 and xfs may
// leave a zero-length file after a power cut).
//
// Files are 0600 whatever the umask or an earlier file's mode: they hold
// a private key and the node's view of its containers. Missing directories
// are made 0700.
package statefile

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

const (
	// FileMode is the mode of every state file.
	FileMode os.FileMode = 0o600
	// DirMode is the mode of the directories made for them.
	DirMode os.FileMode = 0o700
)

// Write replaces the file at path with v as indented JSON (see WriteBytes).
func Write(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: encode: %w", path, err)
	}
	return WriteBytes(path, append(b, '\n'))
}

// WriteBytes replaces the file at path with b atomically and durably: when
// it returns nil, b is on disk under path, and a crash at any moment
// leaves either the old content or b.
func WriteBytes(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// The temporary file goes beside the target: the rename must not cross
	// a mount, and syncing dir then covers it.
	f, err := renameio.NewPendingFile(path, renameio.WithTempDir(dir), renameio.WithStaticPermissions(FileMode))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer f.Cleanup()
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.CloseAtomicallyReplace(); err != nil { // syncs the file, then renames
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// syncDir makes the directory entries of dir durable, like `sync -f DIR`.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
