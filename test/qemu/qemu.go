// Package qemu boots Debian's kernel under qemu (TCG: no KVM needed) with an
// initramfs made of the project's test binaries and the few host tools
// they call, so tests can use kernel features this machine's kernel lacks
// (ESP). The guest runs a script as PID 1 and powers off; its console is
// the test's output.
package qemu

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Kernel is an unpacked Debian linux-image package: Root holds boot/ and
// lib/modules/VERSION with modules.dep (scripts/vm-kernel makes it).
type Kernel struct {
	Root    string
	Version string
}

// FindKernel looks in dir for an unpacked kernel.
func FindKernel(dir string) (Kernel, error) {
	vms, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(vms) == 0 {
		return Kernel{}, fmt.Errorf("no kernel in %s (make setup unpacks Debian's linux-image-amd64 there)", dir)
	}
	sort.Strings(vms)
	v := strings.TrimPrefix(filepath.Base(vms[len(vms)-1]), "vmlinuz-")
	if _, err := os.Stat(filepath.Join(dir, "lib", "modules", v, "modules.dep")); err != nil {
		return Kernel{}, fmt.Errorf("kernel %s in %s has no modules.dep: %w", v, dir, err)
	}
	return Kernel{Root: dir, Version: v}, nil
}

// Image returns the kernel image's path.
func (k Kernel) Image() string { return filepath.Join(k.Root, "boot", "vmlinuz-"+k.Version) }

// Modules resolves names (with their dependencies, in load order) to the
// module files' paths inside the image, using the host's modprobe on the
// unpacked tree. Built-in ones are left out.
func (k Kernel) Modules(names ...string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, n := range names {
		b, err := exec.Command(modprobe(), "-d", k.Root, "-S", k.Version, "--show-depends", n).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("modprobe --show-depends %s: %v: %s", n, err, b)
		}
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 2 || f[0] != "insmod" {
				continue
			}
			p := strings.TrimPrefix(f[1], strings.TrimRight(k.Root, "/"))
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// modprobe finds kmod's modprobe, which a non-root PATH may lack.
func modprobe() string {
	for _, p := range []string{"modprobe", "/usr/sbin/modprobe", "/sbin/modprobe"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	return "modprobe"
}

// Image is an initramfs being assembled.
type Image struct {
	files map[string]string // path in the image -> host path
	links map[string]string // path in the image -> link target
	data  map[string][]byte // path in the image -> contents (mode 0755)
}

// NewImage returns an empty image.
func NewImage() *Image {
	return &Image{files: map[string]string{}, links: map[string]string{}, data: map[string][]byte{}}
}

// Add puts the host file src at dst.
func (im *Image) Add(dst, src string) { im.files[dst] = src }

// Write puts contents at dst, executable.
func (im *Image) Write(dst string, contents []byte) { im.data[dst] = contents }

// Link makes dst a symlink to target.
func (im *Image) Link(dst, target string) { im.links[dst] = target }

// AddProgram puts a host program at dst with the shared libraries it needs
// (as ldd lists them) at their host paths.
func (im *Image) AddProgram(dst, src string) error {
	im.Add(dst, src)
	out, err := exec.Command("ldd", src).CombinedOutput()
	if err != nil && strings.Contains(string(out), "not a dynamic executable") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ldd %s: %v: %s", src, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				real, err := filepath.EvalSymlinks(f)
				if err != nil {
					return err
				}
				im.Add(f, real)
			}
		}
	}
	return nil
}

// WriteTo writes the image as an uncompressed newc cpio archive, which the
// kernel unpacks into its root file system.
func (im *Image) WriteTo(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := &cpio{w: bufio.NewWriterSize(f, 1<<20), dirs: map[string]bool{}}
	var paths []string
	for p := range im.files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		b, err := os.ReadFile(im.files[p])
		if err != nil {
			f.Close()
			return err
		}
		st, err := os.Stat(im.files[p])
		if err != nil {
			f.Close()
			return err
		}
		w.file(p, 0o100000|uint32(st.Mode().Perm()), b)
	}
	for p, b := range im.data {
		w.file(p, 0o100755, b)
	}
	for p, target := range im.links {
		w.file(p, 0o120777, []byte(target))
	}
	w.file("TRAILER!!!", 0, nil)
	if err := w.w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type cpio struct {
	w    *bufio.Writer
	ino  uint32
	dirs map[string]bool
}

func (c *cpio) header(name string, mode uint32, size int) {
	c.ino++
	fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	c.w.WriteString(name)
	c.w.WriteByte(0)
	c.pad(110 + len(name) + 1)
}

func (c *cpio) pad(n int) {
	for ; n%4 != 0; n++ {
		c.w.WriteByte(0)
	}
}

// file writes an entry, after the directories above it that are not
// written yet, top-most first.
func (c *cpio) file(p string, mode uint32, b []byte) {
	name := strings.TrimPrefix(p, "/")
	if name != "TRAILER!!!" {
		var missing []string
		for d := filepath.Dir(name); d != "." && d != "/" && !c.dirs[d]; d = filepath.Dir(d) {
			missing = append(missing, d)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			c.dirs[missing[i]] = true
			c.header(missing[i], 0o40755, 0)
		}
	}
	c.header(name, mode, len(b))
	c.w.Write(b)
	c.pad(len(b))
}

// Run boots kernel with initrd and the kernel command line extra, copying
// the console to out, until the guest powers off or ctx ends. qemuArgs
// are added to qemu's command line (devices, such as ShareHostRoot's).
func Run(ctx context.Context, k Kernel, initrd, extra string, memMB, cpus int, out io.Writer, qemuArgs ...string) error {
	args := []string{
		"-accel", "tcg,thread=multi", "-cpu", "max", "-m", fmt.Sprint(memMB), "-smp", fmt.Sprint(cpus),
		"-kernel", k.Image(), "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet " + extra,
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-net", "none",
	}
	args = append(args, qemuArgs...)
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = out, out
	return cmd.Run()
}

// HostRootTag is the 9p mount tag under which ShareHostRoot exports this
// machine's root.
const HostRootTag = "hostroot"

// ShareHostRoot is qemu's arguments that export this machine's root file
// system to the guest, read-only, as 9p over virtio (mount tag
// HostRootTag): the guest mounts it with
//
//	mount -t 9p -o trans=virtio,version=9p2000.L hostroot /lower
//
// and so runs the host's programs (dockerd, containerd, iptables) without
// their being copied into the initramfs. The guest needs the modules
// virtio_pci, 9pnet_virtio and 9p. multidevs=remap gives files of the
// host's several file systems distinct inode numbers in the guest.
func ShareHostRoot() []string {
	return []string{"-virtfs", "local,path=/,mount_tag=" + HostRootTag + ",security_model=none,readonly=on,multidevs=remap"}
}
