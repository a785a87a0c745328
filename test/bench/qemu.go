//go:build linux

package main

// -qemu runs the benchmark with -encrypted inside Debian's kernel under
// qemu (test/qemu): this machine's kernel has no ESP, so the stock
// overlay's encrypted networks cannot carry data here.
//
// The guest runs this machine's own programs. qemu exports the host's
// root read-only over 9p (qemu.ShareHostRoot); the initramfs holds only
// busybox, this binary and the modules for 9p and overlayfs. Its init
// (stage 1) mounts the export under an overlayfs whose upper layer is a
// tmpfs, copies this binary in and switch_roots into it; stage 2, the
// host's /bin/sh in the new root, mounts /proc, /sys, /run, /tmp (tmpfs:
// the lab's directory, dockerd's data-root on overlay2) and cgroup2,
// binds the guest kernel's modules where the host's modprobe looks for
// them (so that the kernel's module autoloading, dockerd's modprobe and
// iptables' extensions find them), loads the data path's modules and
// runs `bench -encrypted` with the lab as on the host: two simulated
// hosts each with its own dockerd 20.10 (the host's Debian package), one
// swarm, vxnet installed from the lab registry. Markers on the console
// give the guest's exit code.
//
// Everything is emulated (TCG), AES-NI included: the absolute figures
// say nothing about real hardware, the ratios between paths measured in
// the same rounds are what a run is for.

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vxnet/vxnet/test/qemu"
)

var (
	inQEMU    = flag.Bool("qemu", false, "run -encrypted inside Debian's kernel (with ESP) under qemu, the host's programs shared read-only over 9p")
	vmKernel  = flag.String("vm-kernel", "/var/cache/vxnet/vm-kernel", "with -qemu: the unpacked Debian kernel (make setup)")
	vmMem     = flag.Int("vm-mem", 5120, "with -qemu: the guest's memory, MB")
	vmCPUs    = flag.Int("vm-cpus", 2, "with -qemu: the guest's CPUs")
	vmTimeout = flag.Duration("vm-timeout", 15*time.Minute, "with -qemu: how long the guest may run")
	vmLog     = flag.String("vm-log", "", "with -qemu: also write the guest's console to this file")
)

// guestDefaults are the settings of the run inside the guest where the
// command line does not give them: short tests, as everything is slow
// emulated; no waiting for a quiet machine inside the guest (it has
// nothing else running; runQEMU waits for the host's quiet before it
// boots and reports the host's CPU use beside the guest's); no first-ping
// trials.
var guestDefaults = map[string]string{
	"rounds":     "7",
	"seconds":    "3",
	"rr-seconds": "1",
	"wait-quiet": "0s",
	"trials":     "0",
	// Two dockerds starting at once, emulated: about a minute each.
	"dockerd-timeout": "5m",
}

// stage1Modules are what the initramfs loads to reach the host's root.
var stage1Modules = []string{"virtio_pci", "9pnet_virtio", "9p", "overlay"}

// guestModules are loaded in stage 2 with the host's modprobe: the lab's
// data path, what dockerd and the stock overlay use (bridge netfilter,
// iptables over nftables, u32 and mark matches, IPVS) and ESP with
// AES-GCM and the random number generators seqiv needs. Anything else is
// loaded on demand by the kernel.
var guestModules = []string{
	"veth", "bridge", "br_netfilter", "vxlan", "macvlan", "dummy", "overlay",
	"nf_tables", "nft_compat", "nft_chain_nat", "nf_conntrack", "nf_nat",
	"iptable_nat", "iptable_filter", "iptable_mangle",
	"xt_u32", "xt_mark", "xt_policy", "xt_conntrack", "xt_MASQUERADE", "xt_addrtype", "xt_nat", "xt_tcpudp", "xt_comment",
	"ip_vs", "ip_vs_rr",
	"esp4", "xfrm_user", "aesni_intel", "ghash_clmulni_intel", "gcm", "ctr", "seqiv", "jitterentropy_rng", "drbg",
}

// stage1 is the initramfs's /init.
const stage1 = `#!/bin/sh
export PATH=/bin
fail() { echo "VXNET-VM-EXIT bench 98 $*"; poweroff -f; }
mkdir -p /proc /sys /dev /lower /upper /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod "$m" || echo "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose ` + qemu.HostRootTag + ` /lower || fail "mount 9p"
mount -t tmpfs -o mode=755 upper /upper
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w root /newroot || fail "mount overlay"
mkdir -p /newroot/opt/vxbench
cp -a /vxbench/. /newroot/opt/vxbench/ || fail "copy"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /opt/vxbench/stage2
`

// stage2 runs in the new root; %[1]s is the guest kernel's modules
// directory as the host's root holds it, %[2]s what it runs after the
// benchmark (profileOut, or nothing).
const stage2 = `#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t tmpfs -o mode=755 run /run
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /run/netns /run/lock "/lib/modules/$(uname -r)"
mount --bind "%[1]s" "/lib/modules/$(uname -r)"
for m in $(cat /opt/vxbench/modules); do modprobe "$m" || echo "modprobe $m failed"; done
ip link set lo up
hostname vxbench
echo "VXNET-VM-BOOTED $(uname -r), $(nproc) CPUs, $(free -m | awk '/Mem:/ {print $2}') MB"
cd /opt/vxbench
./bench $(cat /opt/vxbench/args) 2>&1
code=$?
%[2]s
echo "VXNET-VM-EXIT bench $code"
sync
/opt/vxbench/busybox poweroff -f
`

// With -profile the guest records and reports into guestProfileDir, on
// its own tmpfs; profileOut then copies them to the host's -profile
// directory, shared writable under the tag profileTag, with the guest's
// /proc/kallsyms (for perf report --kallsyms DIR/kallsyms -i NAME.data on
// the host: the guest's kernel is not this machine's).
const (
	guestProfileDir = "/tmp/vxbench-profile"
	profileTag      = "vxprofile"
	profileOut      = `mkdir -p /mnt/profile
if mount -t 9p -o trans=virtio,version=9p2000.L ` + profileTag + ` /mnt/profile; then
	cp -a ` + guestProfileDir + `/. /mnt/profile/ || echo "copying the profiles out failed"
	cat /proc/kallsyms > /mnt/profile/kallsyms
	umount /mnt/profile
else
	echo "mounting the host's -profile directory failed: the profiles stay in the guest"
fi`
)

// runQEMU boots the guest, copies its console to stdout (and -vm-log)
// and returns the guest run's exit code.
func runQEMU() (int, error) {
	k, err := qemu.FindKernel(*vmKernel)
	if err != nil {
		return 0, err
	}
	args, err := guestArgs()
	if err != nil {
		return 0, err
	}
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return 0, fmt.Errorf("needs busybox (static, make setup): %w", err)
	}
	work, err := os.MkdirTemp("", "vxbench-vm")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(work)

	im := qemu.NewImage()
	im.Write("/init", []byte(stage1))
	im.Add("/bin/busybox", busybox)
	for _, a := range []string{"sh", "mount", "umount", "mkdir", "insmod", "cat", "cp", "echo", "switch_root", "poweroff"} {
		im.Link("/bin/"+a, "busybox")
	}
	mods, err := k.Modules(stage1Modules...)
	if err != nil {
		return 0, err
	}
	for _, m := range mods {
		im.Add(m, filepath.Join(k.Root, m))
	}
	im.Write("/modules.list", []byte(strings.Join(mods, "\n")+"\n"))
	im.Add("/vxbench/bench", self)
	im.Add("/vxbench/busybox", busybox)
	modDir, err := filepath.Abs(filepath.Join(k.Root, "lib", "modules", k.Version))
	if err != nil {
		return 0, err
	}
	after, share := "", qemu.ShareHostRoot()
	if *profile != "" {
		dir, err := filepath.Abs(*profile)
		if err != nil {
			return 0, fmt.Errorf("-profile %s: %w", *profile, err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return 0, fmt.Errorf("-profile: %w", err)
		}
		after = profileOut
		// qemu's option syntax escapes a comma by doubling it.
		share = append(share, "-virtfs", "local,path="+strings.ReplaceAll(dir, ",", ",,")+",mount_tag="+profileTag+",security_model=none")
	}
	im.Write("/vxbench/stage2", fmt.Appendf(nil, stage2, modDir, after))
	im.Write("/vxbench/modules", []byte(strings.Join(guestModules, "\n")+"\n"))
	im.Write("/vxbench/args", []byte(strings.Join(args, " ")+"\n"))
	initrd := filepath.Join(work, "initrd.cpio")
	if err := im.WriteTo(initrd); err != nil {
		return 0, err
	}

	fmt.Printf("booting Debian's kernel %s under qemu (TCG, %d CPUs, %d MB), the host's root shared read-only;\nin the guest: bench %s\n\n",
		k.Version, *vmCPUs, *vmMem, strings.Join(args, " "))
	var log io.Writer = os.Stdout
	if *vmLog != "" {
		f, err := os.Create(*vmLog)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		log = io.MultiWriter(os.Stdout, f)
	}
	// Inside the guest the host's other work is invisible: wait for it
	// here, and say how busy the host was while the guest measured.
	if jobs := waitForQuiet(*waitQuiet); len(jobs) > 0 {
		fmt.Printf("the host was still busy after -wait-quiet %v: %s\n", *waitQuiet, strings.Join(jobs, ", "))
	}
	hostCPU := readCPU()
	defer func() {
		busy, steal := readCPU().since(hostCPU).percent()
		fmt.Printf("the host, qemu included: busy %.0f%% of its %d CPUs while the guest ran; hypervisor steal %.1f%%\n",
			busy, runtime.NumCPU(), steal)
	}()
	// SIGINT or SIGTERM end qemu (CommandContext) and this function's
	// cleanups, rather than leaving an orphaned guest on both CPUs.
	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	ctx, cancel := context.WithTimeout(ctx, *vmTimeout)
	defer cancel()
	pr, pw := io.Pipe()
	exit := ""
	done := make(chan struct{})
	go func() {
		defer close(done)
		marker := regexp.MustCompile(`VXNET-VM-EXIT bench (\d+)`)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			fmt.Fprintln(log, line)
			if m := marker.FindStringSubmatch(line); m != nil {
				exit = m[1]
			}
		}
		io.Copy(io.Discard, pr)
	}()
	start := time.Now()
	// No AppArmor: dockerd would find it enabled and have runc apply a
	// profile that no apparmor_parser loaded.
	err = qemu.Run(ctx, k, initrd, "apparmor=0", *vmMem, *vmCPUs, pw, share...)
	pw.Close()
	<-done
	fmt.Printf("\nqemu ran %v\n", time.Since(start).Round(time.Second))
	if ctx.Err() == context.DeadlineExceeded {
		return 0, fmt.Errorf("the guest did not finish within -vm-timeout %v: raise it, or see where the console (above, or -vm-log) stopped", *vmTimeout)
	}
	if ctx.Err() != nil {
		return 0, fmt.Errorf("stopped by a signal: %w", context.Cause(ctx))
	}
	if err != nil {
		return 0, fmt.Errorf("qemu: %w", err)
	}
	if exit == "" {
		return 0, fmt.Errorf("the guest powered off without reporting the benchmark's exit code: the console above (or -vm-log) says why")
	}
	var code int
	fmt.Sscan(exit, &code)
	return code, nil
}

// guestArgs is the benchmark's command line inside the guest: -encrypted,
// the flags given here (but -qemu's own), guestDefaults for the others,
// and -bin and -plugin as absolute paths, which the guest sees through
// the shared root.
func guestArgs() ([]string, error) {
	set := map[string]string{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = f.Value.String() })
	for name, v := range guestDefaults {
		if _, ok := set[name]; !ok {
			set[name] = v
		}
	}
	for _, name := range []string{"qemu", "vm-kernel", "vm-mem", "vm-cpus", "vm-timeout", "vm-log", "encrypted", "hold", "profile"} {
		delete(set, name)
	}
	if *profile != "" {
		set["profile"] = guestProfileDir
	}
	for _, name := range []string{"bin", "plugin"} {
		p, err := filepath.Abs(flag.Lookup(name).Value.String())
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("-%s: %w (make plugin builds both)", name, err)
		}
		set[name] = p
	}
	args := []string{"-encrypted"}
	for _, f := range sortedKeys(set) {
		v := set[f]
		if strings.ContainsAny(v, " \t\n'\"$") {
			return nil, fmt.Errorf("-%s %q: the guest's command line takes no spaces or quotes", f, v)
		}
		args = append(args, "-"+f+"="+v)
	}
	return args, nil
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
