// Command demo runs vxnet on a lab of three simulated hosts: etcd, one
// vxnet per host, two containers per host on one overlay network. It
// pings every pair, prints each host's peer table, removes a container to
// show its peers going, and tears everything down. Run it as root:
//
//	make demo
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/vxnet/vxnet/test/lab"
)

func main() {
	bin := flag.String("bin", "bin/vxnet", "the vxnet binary")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: run as root (it creates network namespaces)")
		os.Exit(2)
	}
	r := lab.NewRunner()

	dir, err := os.MkdirTemp("", "vxnet-demo")
	if err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { os.RemoveAll(dir) })

	step("lab: 3 hosts on underlay 192.0.2.0/24, etcd at %s, vxnet on each host", lab.EtcdAddr)
	l := lab.New(r, dir, *bin, 3)
	for _, h := range l.Hosts {
		h.Start()
	}

	nid := "demo" + lab.NewID()[:21]
	step("network %s…: AllocateNetwork on h1 (the manager), CreateNetwork on every host", nid[:12])
	opts, err := l.CreateNetwork(nid, nil, lab.Pool{Subnet: "198.18.20.0/24", Gateway: "198.18.20.1"})
	if err != nil {
		r.Fatalf("create network: %v", err)
	}
	fmt.Printf("  VNI %s\n", opts["com.docker.network.driver.overlay.vxlanid_list"])

	step("containers: two per host")
	var cs []*lab.Container
	for i, h := range append(l.Hosts, l.Hosts...) {
		c, err := h.Run(nid, fmt.Sprintf("198.18.20.%d/24", 10+i))
		if err != nil {
			r.Fatalf("run container on %s: %v", h.Name, err)
		}
		fmt.Printf("  %-3s %-14s %s\n", h.Name, c.IP, c.MAC)
		cs = append(cs, c)
	}

	step("ping every pair")
	fails := 0
	for _, a := range cs {
		var row []string
		for _, b := range cs {
			switch {
			case a == b:
				row = append(row, "  -  ")
			case a.NS.Ping(b.IP, 1) == nil:
				row = append(row, " ok  ")
			default:
				row = append(row, "FAIL ")
				fails++
			}
		}
		fmt.Printf("  %-3s %-13s %s\n", a.Host.Name, a.IP, strings.Join(row, ""))
	}

	step("peer table of each host (kernel state in the network's namespace)")
	for _, h := range l.Hosts {
		printPeers(h, nid)
	}
	step("etcd keys")
	for _, k := range l.Etcd.Keys(r, "/vxnet/") {
		fmt.Println("  " + k)
	}

	gone := cs[1]
	step("remove the container %s on %s", gone.IP, gone.Host.Name)
	if err := gone.Remove(); err != nil {
		r.Fatalf("remove: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	for _, h := range l.Hosts {
		printPeers(h, nid)
	}

	step("tear down")
	for _, c := range cs {
		if c != gone {
			c.Remove()
		}
	}
	if err := l.RemoveNetwork(nid); err != nil {
		r.Fatalf("remove network: %v", err)
	}
	if fails > 0 {
		r.Fatalf("%d pings failed", fails)
	}
	fmt.Println("\ndemo passed: every container reached every other across hosts")
	r.Exit(0)
}

func step(format string, args ...any) { fmt.Printf("\n== "+format+"\n", args...) }

// printPeers shows the permanent neighbour and FDB entries vxnet programmed
// on h, as `ip neigh` and `bridge fdb` see them.
func printPeers(h *lab.Host, nid string) {
	neigh, err := h.InNetwork(nid, "ip", "neigh", "show", "nud", "permanent")
	if err != nil {
		fmt.Printf("  %s: no namespace for the network (%v)\n", h.Name, strings.TrimSpace(neigh))
		return
	}
	fdb, _ := h.InNetwork(nid, "bridge", "fdb", "show")
	vtep := map[string]string{}
	for _, l := range strings.Split(fdb, "\n") {
		f := strings.Fields(l)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "dst" {
				vtep[f[0]] = f[i+1]
			}
		}
	}
	fmt.Printf("  %s:\n", h.Name)
	for _, l := range strings.Split(strings.TrimSpace(neigh), "\n") {
		f := strings.Fields(l) // IP dev DEV lladdr MAC PERMANENT
		if len(f) >= 5 {
			fmt.Printf("    %-14s %s  via VTEP %s\n", f[0], f[4], vtep[f[4]])
		}
	}
}
