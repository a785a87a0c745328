package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DockerVersion is a Docker release the lab's daemons run. The zero value,
// Docker20, is the machine's own dockerd and docker client (bookworm's
// docker.io 20.10, installed by make setup). The others are Debian's
// packages of a later suite, in a root filesystem that scripts/docker-rootfs
// built with debootstrap (make setup runs it): dockerd runs pivot_root'ed
// into an overlay of it, and the tests' docker client is the rootfs's own.
type DockerVersion struct {
	// Name is the release as tests name it ("28.5"): the version the
	// rootfs must hold, as a prefix of dockerd's version.
	Name string
	// Suite is the Debian suite the rootfs was built from; empty for the
	// machine's own Docker.
	Suite string
}

// The Docker releases the lab runs.
var (
	Docker20 = DockerVersion{Name: "20.10"}
	Docker26 = DockerVersion{Name: "26.1", Suite: "trixie"}
	Docker28 = DockerVersion{Name: "28.5", Suite: "sid"}
)

// RootfsDir is where scripts/docker-rootfs caches the root filesystems.
const RootfsDir = "/var/cache/vxnet"

func (v DockerVersion) String() string { return "Docker " + v.Name }

// Rootfs is the root filesystem v runs from; empty for the machine's own.
func (v DockerVersion) Rootfs() string {
	if v.Suite == "" {
		return ""
	}
	return filepath.Join(RootfsDir, "docker-"+v.Suite)
}

// Installed is the Docker version the rootfs holds (Debian's version less
// its epoch and +dfsg suffix, as scripts/docker-rootfs wrote it), or the
// machine's own dockerd's.
func (v DockerVersion) Installed() (string, error) {
	if v.Suite == "" {
		out, err := exec.Command("dockerd", "--version").Output()
		if err != nil {
			return "", fmt.Errorf("dockerd --version: %w", err)
		}
		// "Docker version 20.10.24+dfsg1, build 297e128"
		f := strings.Fields(string(out))
		if len(f) < 3 {
			return "", fmt.Errorf("dockerd --version: %q", out)
		}
		ver, _, _ := strings.Cut(strings.TrimSuffix(f[2], ","), "+")
		return ver, nil
	}
	b, err := os.ReadFile(filepath.Join(v.Rootfs(), ".vxnet-docker-version"))
	if err != nil {
		return "", fmt.Errorf("no rootfs of Debian %s's Docker (make setup, scripts/docker-rootfs): %w", v.Suite, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Available reports what the lab lacks to run v on this machine, if
// anything: the tools of DockerAvailable, and for a later release its
// rootfs, holding release v.Name.
func (v DockerVersion) Available() error {
	if err := DockerAvailable(); err != nil {
		return err
	}
	got, err := v.Installed()
	if err != nil {
		return err
	}
	if !strings.HasPrefix(got, v.Name+".") {
		return fmt.Errorf("%s is wanted, but Debian %s's rootfs holds Docker %s: the suite moved on; update lab.DockerVersion and the README's tested versions", v, v.Suite, got)
	}
	return nil
}

// cli is the command line that runs v's docker client: the machine's, or
// the rootfs's binary through the rootfs's own dynamic loader and
// libraries (its libc may be newer than the machine's), so that paths on
// the command line (docker import FILE, docker plugin create DIR) are the
// machine's.
func (v DockerVersion) cli() []string {
	root := v.Rootfs()
	if root == "" {
		return []string{DockerCLI}
	}
	return []string{filepath.Join(root, "usr/lib64/ld-linux-x86-64.so.2"),
		"--library-path", filepath.Join(root, "usr/lib/x86_64-linux-gnu"),
		filepath.Join(root, "usr/bin/docker")}
}

// hostRoot is where a daemon of a later release keeps the machine's root
// after its pivot_root, in its own mount namespace: the host tools the
// tests run there (InHostMounts) are found through it.
const hostRoot = "/.host"

// pivotScript is the part of dockerd's start script (see Daemon.start)
// that moves it into v's rootfs: an overlay of the rootfs (each daemon
// writes its own upper layer, in work), with the daemon's /dev, /proc, its
// fresh /sys and cgroup tree, its shared /run (the plugin's pins made under
// it reach the old root's /run too, its peer) and the daemon's directory
// dir at the same path. The old root stays at hostRoot. Empty for the
// machine's own Docker.
func (v DockerVersion) pivotScript(dir, work string) string {
	if v.Suite == "" {
		return ""
	}
	return fmt.Sprintf(`mkdir -p %[2]s/upper %[2]s/work %[2]s/root
mount -t overlay overlay -o lowerdir=%[1]s,upperdir=%[2]s/upper,workdir=%[2]s/work %[2]s/root
for d in dev proc sys run; do mount --rbind /$d %[2]s/root/$d; done
mkdir -p %[2]s/root%[3]s %[2]s/root%[4]s
mount --bind %[3]s %[2]s/root%[3]s
cd %[2]s/root
pivot_root . .%[4]s
cd /
`, v.Rootfs(), work, dir, hostRoot)
}
