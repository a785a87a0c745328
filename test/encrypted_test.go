package test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/driver"
	"github.com/vxnet/vxnet/internal/nstest"
	"github.com/vxnet/vxnet/ipsec"
	"github.com/vxnet/vxnet/plugin"
	"github.com/vxnet/vxnet/test/lab"
)

// On a kernel without ESP (this machine's), a container's Join of an
// encrypted network is refused at once with the missing kernel support
// named, on every host, the manager (which allocates the network: whether
// a host can encrypt is each host's to decide) included; nothing is left
// in any kernel, and once the network is removed, nothing in etcd: never a
// network that would black-hole or leak.
func TestEncryptedRefusedWithoutESP(t *testing.T) {
	if ipsec.Probe() == nil {
		t.Skip("this kernel has ESP; TestEncrypted covers it")
	}
	l := newLab(t, 2)
	before := l.Etcd.State(t)
	nid := lab.NetworkID("enc")
	if _, err := l.CreateNetwork(nid, map[string]string{"encrypted": ""}, net1); err != nil {
		t.Fatalf("encrypted network on a manager without ESP: %v; want it allocated, for hosts that can carry it", err)
	}
	for i, h := range l.Hosts {
		_, err := h.Run(nid, fmt.Sprintf("198.18.10.%d/24", 10+i))
		if err == nil || !strings.Contains(err.Error(), "this host refuses network "+nid) || !strings.Contains(err.Error(), "CONFIG_INET_ESP") || !strings.Contains(err.Error(), "modprobe esp4") {
			t.Fatalf("a container joining an encrypted network on %s, a kernel without ESP: %v; want an error naming CONFIG_INET_ESP and modprobe esp4", h.Name, err)
		}
		t.Logf("refused on %s: %v", h.Name, err)
	}
	for _, h := range l.Hosts {
		if _, err := os.Stat(h.NetNSPath(nid)); !os.IsNotExist(err) {
			t.Errorf("refused network left a namespace on %s", h.Name)
		}
		if out, _ := h.NS.Exec("ip", "xfrm", "state"); strings.TrimSpace(out) != "" {
			t.Errorf("refused network left xfrm state on %s: %s", h.Name, out)
		}
	}
	if err := l.RemoveNetwork(nid); err != nil {
		t.Fatal(err)
	}
	if after := l.Etcd.State(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("refused network changed etcd:\nbefore %v\nafter  %v", before, after)
	}
}

// Whether a host can encrypt is decided on that host: here the manager
// (h1, whose ipsec.key is unusable: a host that cannot encrypt, on a kernel
// that could) allocates an encrypted network all the same, h2 and h3 carry
// it, and a container joining it on h1 is refused with h1's fix. Run in the
// qemu lab: this machine's kernel has no ESP for h2 and h3.
func TestEncryptedOnEachHostThatCan(t *testing.T) {
	if err := ipsec.Probe(); err != nil {
		t.Skipf("no ESP in this kernel (TestEncryptedInQEMU runs this test inside qemu): %v", err)
	}
	nstest.RequireRoot(t)
	l := lab.New(t, t.TempDir(), vxnetBin, 3)
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	keyFile := filepath.Join(h1.StateDir(), "ipsec.key")
	if err := os.MkdirAll(h1.StateDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte("\x00not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts {
		h.Start()
	}
	nid := lab.NetworkID("each")
	if _, err := l.CreateNetwork(nid, map[string]string{"encrypted": ""}, lab.Pool{Subnet: "198.18.23.0/24", Gateway: "198.18.23.1"}); err != nil {
		t.Fatalf("encrypted network on a manager that cannot encrypt: %v; want it allocated for the hosts that can", err)
	}
	c2, c3 := must(h2.Run(nid, "198.18.23.2/24")), must(h3.Run(nid, "198.18.23.3/24"))
	pingAll(t, []*lab.Container{c2, c3})
	if _, err := h1.Run(nid, "198.18.23.4/24"); err == nil || !strings.Contains(err.Error(), "this host refuses network "+nid) || !strings.Contains(err.Error(), "remove "+keyFile) {
		t.Errorf("a container joining on h1, which cannot encrypt: %v; want a refusal naming %q", err, "remove "+keyFile)
	} else {
		t.Logf("refused on h1: %v", err)
	}
	if _, err := os.Stat(h1.NetNSPath(nid)); !os.IsNotExist(err) {
		t.Errorf("the refused network left a namespace on h1")
	}
	for _, h := range []*lab.Host{h2, h3} {
		if st := encStatus(t, h); st.Active != 1 {
			t.Errorf("%s protects %d encrypted networks; want 1", h.Name, st.Active)
		}
	}
}

func encStatus(t *testing.T, h *lab.Host) ipsec.Status {
	t.Helper()
	var st driver.Status
	if err := h.Call(plugin.StatusPath, nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Encryption == nil {
		t.Fatalf("%s reports no encryption status", h.Name)
	}
	return *st.Encryption
}

// outSPI returns the SPI of h's outbound SA to dst.
func outSPI(t *testing.T, h *lab.Host, dst string) string {
	t.Helper()
	out, err := h.NS.Exec("ip", "xfrm", "state", "list", "src", h.Addr, "dst", dst)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`spi (0x[0-9a-f]+)`).FindAllStringSubmatch(out, -1)
	if len(m) != 1 {
		t.Fatalf("%s holds %d outbound SAs to %s; want 1:\n%s", h.Name, len(m), dst, out)
	}
	return m[0][1]
}

// rotateUnderFlow pings dst from c every 20 ms for secs seconds while it
// forces a key rotation on each of hosts in turn, 2 s apart, and returns
// what the ping sent and lost.
func rotateUnderFlow(t *testing.T, c *lab.Container, dst string, secs int, hosts ...*lab.Host) (sent, lost int) {
	t.Helper()
	wait := pingFor(t, c, dst, secs)
	for _, h := range hosts {
		time.Sleep(2 * time.Second)
		if out, code := vxnetCmd(h, "rotate"); code != 0 {
			t.Fatalf("vxnet rotate on %s: %s", h.Name, out)
		}
	}
	return wait()
}

func vniOf(t *testing.T, opts map[string]string) uint32 {
	v, err := strconv.ParseUint(opts[optVNIs], 10, 32)
	if err != nil {
		t.Fatalf("no VNI in %v", opts)
	}
	return uint32(v)
}

// Encrypted and plain networks side by side on a kernel with ESP (the qemu
// lab): both carry traffic; the underlay shows only ESP for the encrypted
// VNI; plaintext injected for it is dropped; rotations and a kill -9 under
// a flow lose nothing and emit no plaintext; removal leaves no IPsec state.
func TestEncrypted(t *testing.T) {
	if err := ipsec.Probe(); err != nil {
		t.Skipf("no ESP in this kernel (TestEncryptedInQEMU runs this test inside qemu): %v", err)
	}
	l := newLab(t, 2)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	enc, plain := lab.NetworkID("enc"), lab.NetworkID("pln")
	encOpts, err := l.CreateNetwork(enc, map[string]string{"encrypted": ""}, lab.Pool{Subnet: "198.18.20.0/24", Gateway: "198.18.20.1"})
	if err != nil {
		t.Fatal(err)
	}
	plainOpts, err := l.CreateNetwork(plain, nil, lab.Pool{Subnet: "198.18.21.0/24", Gateway: "198.18.21.1"})
	if err != nil {
		t.Fatal(err)
	}
	encVNI, plainVNI := vniOf(t, encOpts), vniOf(t, plainOpts)
	e1, e2 := must(h1.Run(enc, "198.18.20.2/24")), must(h2.Run(enc, "198.18.20.3/24"))
	p1, p2 := must(h1.Run(plain, "198.18.21.2/24")), must(h2.Run(plain, "198.18.21.3/24"))

	t.Run("MTU", func(t *testing.T) {
		for c, want := range map[*lab.Container]string{e1: "mtu 1416", p1: "mtu 1450"} {
			if out, _ := c.NS.Exec("ip", "-o", "link", "show", "eth0"); !strings.Contains(out, want) {
				t.Errorf("container on %s: %s; want %s", c.NID[:3], out, want)
			}
		}
	})

	t.Run("traffic: only ESP on the wire for the encrypted VNI", func(t *testing.T) {
		capt, err := lab.StartCapture(h1.NS, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		pingAll(t, []*lab.Container{e1, e2})
		pingAll(t, []*lab.Container{p1, p2})
		transfer(t, e1, e2, 2<<20)
		transfer(t, p1, p2, 2<<20)
		// The largest packet the encrypted MTU allows crosses whole.
		if err := e1.NS.Ping(e2.IP, 3, "-M", "do", "-s", "1388"); err != nil {
			t.Errorf("don't-fragment ping of 1416 bytes over the encrypted network: %v", err)
		}
		pk := capt.Stop()
		vx := pk.VXLAN()
		t.Logf("measured on h1's underlay: %d ESP packets, plain VXLAN %d for the encrypted VNI %d, %d for the plain VNI %d, %d fragments",
			pk.ESP(), vx[encVNI], encVNI, vx[plainVNI], plainVNI, pk.Fragments())
		if vx[encVNI] != 0 {
			t.Errorf("%d plaintext VXLAN packets of the encrypted VNI on the underlay", vx[encVNI])
		}
		if vx[plainVNI] == 0 || pk.ESP() == 0 {
			t.Errorf("capture saw %d plain VXLAN packets of the plain network and %d ESP packets; want both > 0", vx[plainVNI], pk.ESP())
		}
		if pk.Fragments() != 0 {
			t.Errorf("%d IP fragments on the underlay; want none", pk.Fragments())
		}
	})

	t.Run("injected plaintext for the encrypted VNI is dropped", func(t *testing.T) {
		ce, err := lab.StartCapture(e1.NS, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		cp, err := lab.StartCapture(p1.NS, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		// From etcd's namespace: a machine on the underlay that runs no
		// vxnet (h2's own firewall would mark and encrypt the packets).
		conn, err := l.Etcd.NS.Dial(t.Context(), "udp", h1.Addr+":4789")
		if err != nil {
			t.Fatal(err)
		}
		mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
		for i := 0; i < 5; i++ {
			conn.Write(lab.VXLANEcho(encVNI, mac(e2.MAC), mac(e1.MAC), net.ParseIP(e2.IP), net.ParseIP(e1.IP), 0x7e01))
			conn.Write(lab.VXLANEcho(plainVNI, mac(p2.MAC), mac(p1.MAC), net.ParseIP(p2.IP), net.ParseIP(p1.IP), 0x7e02))
		}
		conn.Close()
		time.Sleep(time.Second)
		gotEnc, gotPlain := ce.Stop().EchoRequests(0x7e01), cp.Stop().EchoRequests(0x7e02)
		t.Logf("measured: of 5 injected plaintext echo requests each, %d reached the encrypted network's container, %d the plain one's", gotEnc, gotPlain)
		if gotEnc != 0 {
			t.Errorf("%d injected plaintext packets reached a container of the encrypted network", gotEnc)
		}
		if gotPlain == 0 {
			t.Error("no injected packet reached the plain network's container: the injection itself is broken")
		}
	})

	t.Run("forced rotations under a flow lose nothing", func(t *testing.T) {
		epoch0, spi0 := encStatus(t, h1).Epoch, outSPI(t, h1, h2.Addr)
		sent, lost := rotateUnderFlow(t, e1, e2.IP, 9, h1, h2, h1)
		t.Logf("measured: ping every 20 ms across 3 forced rotations: %d sent, %d lost", sent, lost)
		if lost != 0 {
			t.Errorf("%d of %d packets lost across key rotations", lost, sent)
		}
		eventually(t, "both hosts at the new epoch, with new SAs", func() error {
			s1, s2 := encStatus(t, h1), encStatus(t, h2)
			if s1.Epoch < epoch0+3 || s2.Epoch != s1.Epoch {
				return fmt.Errorf("epochs %d and %d; want equal and at least %d", s1.Epoch, s2.Epoch, epoch0+3)
			}
			if spi := outSPI(t, h1, h2.Addr); spi == spi0 {
				return fmt.Errorf("outbound SPI still %s", spi)
			}
			return nil
		})
	})

	t.Run("kill -9 and restart emit no plaintext", func(t *testing.T) {
		capt, err := lab.StartCapture(h1.NS, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		wait := pingFor(t, e1, e2.IP, 6)
		time.Sleep(time.Second)
		h1.Kill()
		time.Sleep(time.Second)
		h1.Start()
		sent, lost := wait()
		pk := capt.Stop()
		vx := pk.VXLAN()
		t.Logf("measured: ping every 20 ms across kill -9 and restart of h1's plugin: %d sent, %d lost; underlay: %d ESP, %d plaintext of the encrypted VNI",
			sent, lost, pk.ESP(), vx[encVNI])
		if vx[encVNI] != 0 {
			t.Errorf("%d plaintext VXLAN packets of the encrypted VNI during the restart", vx[encVNI])
		}
		if lost != 0 {
			t.Errorf("%d of %d packets lost across the restart", lost, sent)
		}
	})

	// Someone flushes h1's IPsec state: `vxnet check` says so, packets are
	// dropped meanwhile (never sent plain), and the plugin puts fresh SAs
	// back within seconds.
	t.Run("flushed IPsec state is reported and repaired", func(t *testing.T) {
		if out, code := vxnetCmd(h1, "check"); code != 0 {
			t.Fatalf("vxnet check before the flush: exit %d\n%s", code, out)
		}
		capt, err := lab.StartCapture(h1.NS, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		h1.NS.MustIP(t, "xfrm", "policy", "flush")
		h1.NS.MustIP(t, "xfrm", "state", "flush")
		if out, code := vxnetCmd(h1, "check"); code != 1 || !strings.Contains(out, "no IPsec SA") {
			t.Errorf("vxnet check after the flush: exit %d\n%s\nwant exit 1 naming the missing SA", code, out)
		}
		e1.NS.Ping(e2.IP, 1) // dropped: no SA
		start := time.Now()
		defer func() {
			if t.Failed() {
				states, _ := h1.NS.Exec("ip", "xfrm", "state")
				policies, _ := h1.NS.Exec("ip", "xfrm", "policy")
				t.Logf("h1's IPsec state:\n%s\n%s", states, policies)
			}
		}()
		eventually(t, "h1 repaired its IPsec state", func() error {
			if err := e1.NS.Ping(e2.IP, 1); err != nil {
				return err
			}
			if out, code := vxnetCmd(h1, "check"); code != 0 {
				return fmt.Errorf("vxnet check: %s", out)
			}
			return nil
		})
		pk := capt.Stop()
		t.Logf("measured: traffic back %.1f s after the flush; underlay meanwhile: %d plaintext packets of the encrypted VNI", time.Since(start).Seconds(), pk.VXLAN()[encVNI])
		if n := pk.VXLAN()[encVNI]; n != 0 {
			t.Errorf("%d plaintext packets of the encrypted VNI while its SAs were flushed", n)
		}
	})

	t.Run("throughput", func(t *testing.T) {
		for _, pair := range [][2]*lab.Container{{e1, e2}, {p1, p2}} {
			start := time.Now()
			transfer(t, pair[0], pair[1], 16<<20)
			secs := time.Since(start).Seconds()
			t.Logf("measured: 16 MiB over TCP on the %s network in %.2f s: %.0f Mbit/s (emulated: qemu TCG)",
				map[bool]string{true: "encrypted", false: "plain"}[pair[0] == e1], secs, 16*8*1.048576/secs)
		}
	})

	t.Run("removal leaves no IPsec state", func(t *testing.T) {
		for _, c := range []*lab.Container{e1, e2, p1, p2} {
			if err := c.Remove(); err != nil {
				t.Fatal(err)
			}
		}
		for _, nid := range []string{enc, plain} {
			if err := l.RemoveNetwork(nid); err != nil {
				t.Fatal(err)
			}
		}
		for _, h := range l.Hosts {
			states, _ := h.NS.Exec("ip", "xfrm", "state")
			policies, _ := h.NS.Exec("ip", "xfrm", "policy")
			var vnis []uint32
			err := h.NS.Do(func() (err error) { vnis, err = (ipsec.Firewall{Port: 4789}).VNIs(); return err })
			if strings.TrimSpace(states) != "" || strings.TrimSpace(policies) != "" || err != nil || len(vnis) != 0 {
				t.Errorf("%s keeps IPsec state after its encrypted network left: states %q policies %q protected VNIs %v (%v)", h.Name, states, policies, vnis, err)
			}
		}
	})
}

// With VXNET_KEY_ROTATION=2s the hosts rotate on their own, each starting
// an epoch when its timer runs out and following the other's: a steady
// flow across several rotations loses nothing.
func TestEncryptedAutomaticRotation(t *testing.T) {
	if err := ipsec.Probe(); err != nil {
		t.Skipf("no ESP in this kernel (TestEncryptedInQEMU runs this test inside qemu): %v", err)
	}
	l := newLab(t, 2, "VXNET_KEY_ROTATION=2s")
	h1, h2 := l.Hosts[0], l.Hosts[1]
	nid := lab.NetworkID("rot")
	if _, err := l.CreateNetwork(nid, map[string]string{"encrypted": "true"}, lab.Pool{Subnet: "198.18.22.0/24", Gateway: "198.18.22.1"}); err != nil {
		t.Fatal(err)
	}
	a, b := must(h1.Run(nid, "198.18.22.2/24")), must(h2.Run(nid, "198.18.22.3/24"))
	if err := a.NS.Ping(b.IP, 1); err != nil {
		t.Fatal(err)
	}
	epoch0 := encStatus(t, h1).Epoch
	wait := pingFor(t, a, b.IP, 10)
	sent, lost := wait()
	epoch1 := encStatus(t, h1).Epoch
	t.Logf("measured: ping every 20 ms for 10 s with 2 s key epochs: epochs %d -> %d, %d sent, %d lost", epoch0, epoch1, sent, lost)
	if epoch1 < epoch0+3 {
		t.Errorf("epoch went from %d to %d in 10 s of 2 s epochs; want at least 3 rotations", epoch0, epoch1)
	}
	if lost != 0 {
		t.Errorf("%d of %d packets lost across automatic rotations", lost, sent)
	}
}

// An encrypted dual-stack network over an IPv6-only underlay (the qemu
// lab): the overlay MTU is 1396 (ESP and VXLAN over IPv6), IPv4 and IPv6
// inside cross as ESP only, plaintext VXLAN injected over IPv6 for the
// encrypted VNI is dropped, and forced rotations under an IPv6 flow lose
// nothing.
func TestEncryptedOverIPv6Underlay(t *testing.T) {
	if err := ipsec.Probe(); err != nil {
		t.Skipf("no ESP in this kernel (TestEncryptedInQEMU runs this test inside qemu): %v", err)
	}
	if err := ipsec.ProbeFamily(true); err != nil {
		t.Fatalf("ESP works over IPv4 here but not over IPv6 (module esp6?): %v", err)
	}
	nstest.RequireRoot(t)
	l := lab.NewIPv6(t, t.TempDir(), vxnetBin, 2)
	for _, h := range l.Hosts {
		h.Start()
	}
	h1, h2 := l.Hosts[0], l.Hosts[1]
	enc := lab.NetworkID("enc6")
	opts, err := l.CreateNetwork(enc, map[string]string{"encrypted": ""},
		lab.Pool{Subnet: "198.18.22.0/24", Gateway: "198.18.22.1"}, lab.Pool{Subnet: "fd00:22::/64", Gateway: "fd00:22::1"})
	if err != nil {
		t.Fatal(err)
	}
	vni := vniOf(t, opts)
	e1 := must(h1.RunDual(enc, "198.18.22.2/24", "fd00:22::2/64"))
	e2 := must(h2.RunDual(enc, "198.18.22.3/24", "fd00:22::3/64"))
	if out, _ := e1.NS.Exec("ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "mtu 1396") {
		t.Errorf("container on an encrypted network over IPv6: %s; want mtu 1396", out)
	}

	capt, err := lab.StartCapture(h1.NS, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	pingAll(t, []*lab.Container{e1, e2})
	pingAll6(t, []*lab.Container{e1, e2})
	transferTo(t, e1, e2, e2.IP6, 2<<20)
	if err := e1.NS.Ping(e2.IP6, 3, "-M", "do", "-s", "1348"); err != nil { // 1396 - 40 - 8
		t.Errorf("don't-fragment ICMPv6 echo of 1396 bytes over the encrypted network: %v", err)
	}
	pk := capt.Stop()
	t.Logf("measured on h1's IPv6 underlay: %d ESP packets, %d plain VXLAN packets of the encrypted VNI %d, %d fragments",
		pk.ESP(), pk.VXLAN()[vni], vni, pk.Fragments())
	if pk.VXLAN()[vni] != 0 || pk.ESP() == 0 || pk.Fragments() != 0 {
		t.Errorf("underlay: %d plain VXLAN packets of the encrypted VNI (want 0), %d ESP (want > 0), %d fragments (want 0)",
			pk.VXLAN()[vni], pk.ESP(), pk.Fragments())
	}

	// Plaintext injected over IPv6 from a machine on the underlay that
	// runs no vxnet.
	ce, err := lab.StartCapture(e1.NS, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := l.Etcd.NS.Dial(t.Context(), "udp", net.JoinHostPort(h1.Addr, "4789"))
	if err != nil {
		t.Fatal(err)
	}
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	for range 5 {
		conn.Write(lab.VXLANEcho(vni, mac(e2.MAC), mac(e1.MAC), net.ParseIP(e2.IP), net.ParseIP(e1.IP), 0x7e06))
	}
	conn.Close()
	time.Sleep(time.Second)
	if got := ce.Stop().EchoRequests(0x7e06); got != 0 {
		t.Errorf("%d of 5 plaintext packets injected over IPv6 reached a container of the encrypted network", got)
	}

	sent, lost := rotateUnderFlow(t, e1, e2.IP6, 6, h1, h2)
	t.Logf("measured: ping6 every 20 ms across 2 forced rotations over the IPv6 underlay: %d sent, %d lost", sent, lost)
	if lost != 0 {
		t.Errorf("%d of %d IPv6 packets lost across key rotations", lost, sent)
	}
	if spi := outSPI(t, h1, h2.Addr); spi == "" {
		t.Error("no outbound SA between the IPv6 VTEPs")
	}
}
