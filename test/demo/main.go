// Command demo runs vxnet the way its users do, on a lab of three simulated
// hosts: each runs its own dockerd 20.10, the three form a swarm, etcd and
// an image registry run beside them, and vxnet is installed on every host
// with `docker plugin install` from that registry. It creates a vxnet
// network, starts two containers per host, pings every pair, prints each
// host's peer table (the kernel's static ARP and FDB entries), removes a
// container to show its entries going everywhere, and tears it all down.
//
//	sudo make demo
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
	plugin := flag.String("plugin", "build/plugin", "the plugin directory (make plugin)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: run as root (it creates network namespaces)")
		os.Exit(2)
	}
	if err := lab.DockerAvailable(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
	r := lab.NewRunner()
	dir, err := os.MkdirTemp("", "vxd")
	if err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { os.RemoveAll(dir) })

	step("lab: 3 hosts on 192.0.2.0/24 (h1 .11, h2 .12, h3 .13), etcd at %s, registry at %s", lab.EtcdAddr, lab.RegistryAddr)
	l := lab.New(r, dir, *bin, 3)
	s := lab.NewSwarm(l, 1)
	fmt.Println("  dockerd on every host, one swarm (h1 manager)")
	drv := s.InstallPlugin(*plugin, "demo", nil)
	fmt.Printf("  docker plugin install --grant-all-permissions %s VXNET_ETCD_ENDPOINTS=%s  (on every host)\n", drv, l.Etcd.Endpoint)

	m := s.Daemons[0]
	step("docker network create -d %s --attachable --subnet 198.18.20.0/24 demo", drv)
	if _, err := m.Docker("network", "create", "-d", drv, "--attachable", "--subnet", "198.18.20.0/24", "demo"); err != nil {
		r.Fatalf("%v", err)
	}
	nid, _ := m.Docker("network", "inspect", "-f", "{{.Id}}", "demo")

	step("docker run: two containers per host")
	type ctr struct {
		d        *lab.Daemon
		name, ip string
	}
	var cs []ctr
	for round := range 2 {
		for _, d := range s.Daemons {
			name := fmt.Sprintf("%s-%d", d.Host.Name, round+1)
			if _, err := d.Docker("run", "-d", "--name", name, "--network", "demo", "busybox:latest", "sleep", "3600"); err != nil {
				r.Fatalf("%v", err)
			}
			ip, _ := d.Docker("inspect", "-f", `{{(index .NetworkSettings.Networks "demo").IPAddress}}`, name)
			fmt.Printf("  %-5s on %s  %s\n", name, d.Host.Name, ip)
			cs = append(cs, ctr{d, name, ip})
		}
	}

	step("ping every pair (docker exec … ping)")
	fmt.Printf("  %-6s", "")
	for _, b := range cs {
		fmt.Printf("%-6s", b.name)
	}
	fmt.Println()
	fails := 0
	for _, a := range cs {
		fmt.Printf("  %-6s", a.name)
		for _, b := range cs {
			switch {
			case a == b:
				fmt.Printf("%-6s", "-")
			default:
				if _, err := a.d.Docker("exec", a.name, "ping", "-c", "1", "-W", "2", b.ip); err != nil {
					fmt.Printf("%-6s", "FAIL")
					fails++
				} else {
					fmt.Printf("%-6s", "ok")
				}
			}
		}
		fmt.Println()
	}

	step("peer table of each host: static ARP and FDB entries in the network's namespace")
	for _, d := range s.Daemons {
		printPeers(d, nid)
	}
	step("etcd keys under /vxnet/")
	for _, k := range l.Etcd.Keys(r, "/vxnet/") {
		fmt.Println("  " + k)
	}

	gone := cs[1]
	step("docker rm -f %s (on %s): its entries go from every other host", gone.name, gone.d.Host.Name)
	gone.d.Docker("rm", "-f", gone.name)
	time.Sleep(300 * time.Millisecond)
	for _, d := range s.Daemons {
		printPeers(d, nid)
	}

	step("tear down")
	if fails > 0 {
		r.Fatalf("%d pings failed", fails)
	}
	fmt.Println("\ndemo passed: every container reached every other across hosts")
	r.Exit(0)
}

func step(format string, args ...any) { fmt.Printf("\n== "+format+"\n", args...) }

// printPeers shows the permanent neighbour and FDB entries vxnet programmed
// on d's host, as `ip neigh` and `bridge fdb` see them.
func printPeers(d *lab.Daemon, nid string) {
	neigh, err := d.InNetwork(nid, "ip", "neigh", "show", "nud", "permanent")
	if err != nil {
		fmt.Printf("  %s: no namespace for the network\n", d.Host.Name)
		return
	}
	fdb, _ := d.InNetwork(nid, "bridge", "fdb", "show")
	vtep := map[string]string{}
	for _, l := range strings.Split(fdb, "\n") {
		f := strings.Fields(l)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "dst" {
				vtep[f[0]] = f[i+1]
			}
		}
	}
	fmt.Printf("  %s:\n", d.Host.Name)
	for _, l := range strings.Split(strings.TrimSpace(neigh), "\n") {
		f := strings.Fields(l) // IP dev DEV lladdr MAC PERMANENT
		if len(f) >= 5 {
			fmt.Printf("    %-14s %s  via VTEP %s\n", f[0], f[4], vtep[f[4]])
		}
	}
}
