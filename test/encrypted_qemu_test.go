package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/nstest"
	"github.com/vxnet/vxnet/test/qemu"
)

// vmModules are what the guest loads at boot: the data plane (veth, VXLAN,
// macvlan), nftables, and ESP with AES-GCM and the random number
// generators seqiv needs.
var vmModules = []string{
	"veth", "bridge", "vxlan", "macvlan", "nf_tables", "esp4", "esp6", "xfrm_user",
	"aesni_intel", "ghash_generic", "ghash_clmulni_intel", "gcm", "ctr", "seqiv",
	"sha3_generic", "jitterentropy_rng", "drbg", // seqiv needs the default RNG
}

// vmInit is PID 1 of the guest: it mounts the basics, loads the modules,
// runs the test binaries and powers off. Markers tell the host each exit
// code.
const vmInit = `#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
mkdir -p /proc /sys /dev /run /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mkdir -p /run/netns /var/lib /root
ln -sf /run /var/run
ip link set lo up
for m in $(cat /modules.list); do insmod "$m" || echo "insmod $m failed"; done
echo "VXNET-VM-BOOTED $(uname -r)"
cd /t
./ipsec.test -test.v -test.count=1 2>&1
echo "VXNET-VM-EXIT ipsec $?"
VXNET_BIN=/bin/vxnet VXNET_BIN_NEXT=/bin/vxnet-next VXNET_TEST_STRICT=1 ./test.test -test.run "$(cat /t/run)" -test.v -test.count=1 -test.timeout=25m 2>&1
echo "VXNET-VM-EXIT test $?"
sync
poweroff -f
`

// TestEncryptedInQEMU runs the encrypted-network tests (TestEncrypted*, and
// ipsec's kernel tests) inside Debian's kernel under qemu: this machine's
// kernel has no ESP. The guest holds these tests' binaries, vxnet, etcd,
// iproute2, ping and nsenter, and nothing else.
func TestEncryptedInQEMU(t *testing.T) {
	if os.Getenv("VXNET_BIN") != "" {
		t.Skip("already inside the qemu lab")
	}
	nstest.RequireRoot(t)
	dir := os.Getenv("VXNET_VM_KERNEL")
	if dir == "" {
		dir = "/var/cache/vxnet/vm-kernel"
	}
	k, err := qemu.FindKernel(dir)
	if err != nil {
		nstest.Unavailable(t, err.Error())
	}
	for _, bin := range []string{"qemu-system-x86_64", "busybox", "etcd", "ip", "nsenter", "ping", "ldd"} {
		if _, err := exec.LookPath(bin); err != nil {
			nstest.Unavailable(t, "needs "+bin+" (make setup)")
		}
	}
	work := t.TempDir()
	for pkg, out := range map[string]string{".": "test.test", "../ipsec": "ipsec.test"} {
		cmd := exec.Command("go", "test", "-c", "-o", filepath.Join(work, out), pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	im := qemu.NewImage()
	im.Write("/init", []byte(vmInit))
	im.Add("/bin/busybox", must1(exec.LookPath("busybox")))
	own := map[string]bool{}
	for _, prog := range []string{"etcd", "ip", "nsenter", "ping"} {
		path := must1(exec.LookPath(prog))
		if err := im.AddProgram("/usr/bin/"+prog, path); err != nil {
			t.Fatal(err)
		}
		own[prog] = true
	}
	applets, err := exec.Command("busybox", "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range strings.Fields(string(applets)) {
		if !own[a] && a != "busybox" {
			im.Link("/bin/"+a, "busybox")
		}
	}
	im.Link("/sbin/modprobe", "/bin/busybox")
	im.Add("/bin/vxnet", vxnetBin)
	im.Add("/bin/vxnet-next", buildNext(t))
	im.Add("/t/test.test", filepath.Join(work, "test.test"))
	im.Add("/t/ipsec.test", filepath.Join(work, "ipsec.test"))
	run := "^TestEncrypted"
	if r := os.Getenv("VXNET_VM_RUN"); r != "" { // e.g. ^TestEncrypted$/flushed
		run = r
	}
	im.Write("/t/run", []byte(run))
	mods, err := k.Modules(vmModules...)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		im.Add(m, filepath.Join(k.Root, m))
	}
	im.Write("/modules.list", []byte(strings.Join(mods, "\n")+"\n"))
	for _, f := range []string{"modules.dep", "modules.alias", "modules.builtin", "modules.order"} {
		p := filepath.Join("lib", "modules", k.Version, f)
		if _, err := os.Stat(filepath.Join(k.Root, p)); err == nil {
			im.Add("/"+p, filepath.Join(k.Root, p))
		}
	}
	initrd := filepath.Join(work, "initrd.cpio")
	if err := im.WriteTo(initrd); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Minute)
	defer cancel()
	logPath := filepath.Join(work, "console.log")
	if keep := os.Getenv("VXNET_VM_LOG"); keep != "" {
		logPath = keep
	}
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	exits := map[string]string{}
	var console []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		marker := regexp.MustCompile(`VXNET-VM-EXIT (\w+) (\d+)`)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			fmt.Fprintln(logf, line)
			console = append(console, line)
			if m := marker.FindStringSubmatch(line); m != nil {
				exits[m[1]] = m[2]
			}
		}
	}()
	start := time.Now()
	err = qemu.Run(ctx, k, initrd, "", 2048, 2, pw)
	pw.Close()
	<-done
	logf.Close()
	t.Logf("qemu (TCG, kernel %s) ran %.0f s; console in %s", k.Version, time.Since(start).Seconds(), logPath)
	report := func() {
		for _, l := range console {
			if strings.Contains(l, "--- ") || strings.Contains(l, "measured") || strings.Contains(l, ".go:") || strings.Contains(l, "VXNET-VM") || strings.Contains(l, "insmod") {
				t.Log(l)
			}
		}
	}
	if err != nil {
		report()
		t.Fatalf("qemu: %v", err)
	}
	if exits["ipsec"] != "0" || exits["test"] != "0" {
		report()
		t.Fatalf("in the guest: ipsec tests exit %q, encrypted-network tests exit %q; want 0 and 0 (tail of console: %s)", exits["ipsec"], exits["test"], tailLines(console, 40))
	}
	report()
}

func tailLines(ls []string, n int) string {
	return "\n" + strings.Join(ls[max(0, len(ls)-n):], "\n")
}

func must1[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
