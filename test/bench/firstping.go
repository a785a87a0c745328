//go:build linux

package main

import (
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vxnet/vxnet/test/lab"
)

// firstPings starts -trials containers on host b per network and times,
// from a's client container, the first answered ping: from `docker run`
// and from its return.
func firstPings(r *lab.Runner, a, b *lab.Daemon, nets []overlay) {
	fmt.Printf("\n### docker run → first answered ping from the other host, %d trials, median\n\n", *trials)
	tableHead([]string{"network", "from docker run", "from its return", "first ping after return answered"}, nil)
	for _, p := range nets {
		var first, afterReturn []time.Duration
		ok := 0
		prefix := strings.TrimSuffix(p.subnet, "0/24")
		cli := pid(r, a, "cli-"+p.name)
		for k := range *trials {
			ip := prefix + strconv.Itoa(100+k)
			name := fmt.Sprintf("new-%s-%d", p.name, k)
			start := time.Now()
			must(r, b, "run", "-d", "--name", name, "--network", "bench-"+p.name, "--ip", ip, "busybox:latest", "sleep", "36000")
			returned := time.Now()
			answered, at := firstPing(cli, ip)
			if answered {
				ok++
			}
			first = append(first, at.Sub(start))
			afterReturn = append(afterReturn, at.Sub(returned))
			b.Docker("rm", "-f", name)
		}
		fmt.Printf("| %s | %v | %v | %d of %d |\n", p.name, medianDur(first), medianDur(afterReturn), ok, *trials)
	}
}

// firstPing pings ip from the network namespace of process pid until an
// answer comes (10 s at most). It reports whether the first ping was
// answered and when an answer first came.
func firstPing(pid int, ip string) (bool, time.Time) {
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "ping", "-c", "1", "-W", "1", ip).Run()
		if err == nil || time.Now().After(deadline) {
			return err == nil && i == 0, time.Now()
		}
	}
}

func medianDur(v []time.Duration) time.Duration {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Millisecond)
}
