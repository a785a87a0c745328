package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/test/lab"
)

// uninstallOn runs `vxnet uninstall` inside h's namespace with the settings
// lab.Host.Start gives h's plugin, and returns its output and exit code.
func uninstallOn(h *lab.Host) (string, int) {
	cmd := exec.Command("nsenter", "--net="+h.NS.Path(), vxnetBin, "uninstall")
	cmd.Env = h.Settings()
	out, err := cmd.CombinedOutput()
	return string(out), exitCode(err)
}

// After its plugin stops, `vxnet uninstall` leaves h1 as if vxnet had never
// been there — no pinned namespace, VXLAN device, xfrm policy or state,
// nftables table, state directory, or etcd record of h1 — and h2 goes on.
// While the plugin serves, it refuses and removes nothing.
func TestUninstallLeavesNothing(t *testing.T) {
	l := newLab(t, 2)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	nid := lab.NetworkID("unin")
	if _, err := l.CreateNetwork(nid, nil, net1); err != nil {
		t.Fatal(err)
	}
	c1 := must(h1.Run(nid, "198.18.10.2/24"))
	c2 := must(h2.Run(nid, "198.18.10.3/24"))
	c3 := must(h2.Run(nid, "198.18.10.4/24"))
	eventually(t, "c1 reaches c2", func() error { return c1.NS.Ping(c2.IP, 1) })
	// What the plugin leaves on a host with encrypted networks: this
	// kernel has no ESP for SAs (the ipsec package's kernel test removes
	// those where it does), so one of vxnet's policies stands for them.
	h1.NS.MustIP(t, "xfrm", "policy", "add", "src", h1.Addr+"/32", "dst", h2.Addr+"/32", "proto", "udp", "dport", "4789",
		"dir", "out", "mark", "0x0e500000", "mask", "0x0e500000",
		"tmpl", "src", h1.Addr, "dst", h2.Addr, "proto", "esp", "reqid", fmt.Sprint(0x76000001), "mode", "transport")
	if out, err := h1.NS.Exec("nft", "list", "table", "inet", "vxnet"); err != nil {
		t.Fatalf("h1 has no vxnet table before uninstall, so the test would prove nothing: %v\n%s", err, out)
	}
	if !hasPins(h1) {
		t.Fatal("h1 has no namespace pinned before uninstall")
	}

	out, code := uninstallOn(h1)
	if code == 0 || !strings.Contains(out, "serving on "+h1.Socket) {
		t.Fatalf("uninstall with the plugin serving: exit %d, want 1 and a refusal:\n%s", code, out)
	}
	if !hasPins(h1) {
		t.Fatal("a refused uninstall removed the pinned namespaces")
	}

	h1.Stop()
	out, code = uninstallOn(h1)
	t.Logf("vxnet uninstall:\n%s", out)
	if code != 0 || !strings.Contains(out, "nothing of vxnet is left on this host") {
		t.Fatalf("uninstall: exit %d\n%s", code, out)
	}
	for _, want := range []string{"removed namespace " + filepath.Join(h1.NetnsDir, nid), "removed 1 xfrm policies and 0 SAs",
		"removed nftables table inet vxnet", "revoked etcd lease", "removed " + h1.StateDir()} {
		if !strings.Contains(out, want) {
			t.Errorf("uninstall output lacks %q", want)
		}
	}

	// h1's kernel and files.
	if _, err := os.Stat(h1.NetnsDir); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", h1.NetnsDir, err)
	}
	if _, err := os.Stat(h1.StateDir()); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", h1.StateDir(), err)
	}
	if devs := devices(t, h1); len(devs) > 0 {
		t.Errorf("vxnet's devices left on h1: %v", devs)
	}
	for _, obj := range []string{"state", "policy"} {
		if out := strings.TrimSpace(h1.NS.MustIP(t, "xfrm", obj)); out != "" {
			t.Errorf("xfrm %s left on h1:\n%s", obj, out)
		}
	}
	if out, err := h1.NS.Exec("nft", "list", "tables"); err != nil || strings.Contains(out, "inet vxnet") {
		t.Errorf("nft list tables on h1: %v\n%s", err, out)
	}

	// etcd: nothing of h1, h2's records whole.
	keys := l.Etcd.Keys(t, "/vxnet/")
	for _, k := range keys {
		if strings.HasSuffix(k, "/h1") || strings.Contains(k, "/h1/") || strings.Contains(k, c1.EID) || strings.HasSuffix(k, "/"+c1.IP) {
			t.Errorf("etcd still holds %s", k)
		}
	}
	for _, want := range []string{"/vxnet/nodes/h2", "/vxnet/endpoints/" + nid + "/" + c2.EID, "/vxnet/endpoints/" + nid + "/" + c3.EID} {
		if !slices.Contains(keys, want) {
			t.Errorf("etcd lost %s; keys: %v", want, keys)
		}
	}

	// h2 goes on: its containers talk, its peer table drops c1 and its
	// kernel matches the table.
	if err := c2.NS.Ping(c3.IP, 2); err != nil {
		t.Errorf("c2 to c3 on h2 after h1's uninstall: %v", err)
	}
	eventually(t, "h2 drops h1's endpoint", func() error {
		if out, _ := vxnetCmd(h2, "peers", nid); strings.Contains(out, c1.IP+" ") {
			return fmt.Errorf("vxnet peers on h2 still lists %s:\n%s", c1.IP, out)
		}
		if out, code := vxnetCmd(h2, "check"); code != 0 {
			return fmt.Errorf("vxnet check on h2: exit %d\n%s", code, out)
		}
		return nil
	})

	out, code = uninstallOn(h1)
	if code != 0 || !strings.Contains(out, "nothing of vxnet was left on this host") {
		t.Errorf("uninstall again: exit %d\n%s", code, out)
	}
}

// devices lists the links of h's namespace that vxnet names: VXLAN
// devices (vxn…) and container interfaces (vxe…).
func devices(t *testing.T, h *lab.Host) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(h.NS.MustIP(t, "-o", "link", "show"), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			name := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")
			if strings.HasPrefix(name, "vxn") || strings.HasPrefix(name, "vxe") {
				out = append(out, name)
			}
		}
	}
	return out
}

// hasPins says whether h has a namespace pinned.
func hasPins(h *lab.Host) bool {
	entries, _ := os.ReadDir(h.NetnsDir)
	return len(entries) > 0
}
