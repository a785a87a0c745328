//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vxnet/vxnet/test/lab"
)

// profilePaths records, for each path, `perf record -a -g` (Debian's
// linux-perf) over a 1-stream transfer of -profile-seconds, into dir:
// NAME.data, and beside it NAME.sym.txt (self time by kernel or user
// symbol), NAME.comm.txt (by command), NAME.callers.txt (inclusive time
// of the symbols with their callers) and NAME.stacks.txt (the symbols
// of 1% self time or more, each with the stacks that lead to them).
// Sender and receiver are simulated hosts on this one kernel, so the
// profile is system-wide: the transmit path shows under the sending
// iperf3 process, and much of the receive path does too, run as softirq
// when the sender's veth hands the packet over (softirq work runs on
// whichever CPU raised it).
func profilePaths(r *lab.Runner, dir string, ps []*path) {
	if _, err := exec.LookPath("perf"); err != nil {
		fmt.Println("\nprofile: no perf (Debian's linux-perf: make setup)")
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		r.Fatalf("%v", err)
	}
	fmt.Printf("\n### Profiles: perf record -a -g, 1 stream for %d s per path, into %s\n", *profSecs, dir)
	for _, p := range ps {
		name := strings.ReplaceAll(strings.ReplaceAll(p.name, " ", ""), "+", "_")
		data := filepath.Join(dir, name+".data")
		res, rx, err := recordTransfer(p, data)
		if err != nil {
			os.Remove(data)
			fmt.Printf("%s: %v\n", p.name, err)
			continue
		}
		fmt.Printf("\n%s: %.2f Gbit/s while profiled (%.3f GB); %s\n", p.name, res.Gbps, res.GB, data)
		if rx.packets > 0 {
			fmt.Printf("the receiving host's underlay link received %d packets of %.0f bytes on average\n", rx.packets, float64(rx.bytes)/float64(rx.packets))
		}
		reports := []struct {
			file string
			args []string
		}{
			{".sym.txt", []string{"--no-children", "--sort", "sym", "-g", "none", "--percent-limit", "0.3"}},
			{".comm.txt", []string{"--no-children", "--sort", "comm", "-g", "none"}},
			{".callers.txt", []string{"--children", "--sort", "sym", "-g", "caller,0.5,callee,function,percent", "--percent-limit", "2"}},
			{".stacks.txt", []string{"--no-children", "--sort", "sym", "-g", "caller,0.5,callee,function,percent", "--percent-limit", "1"}},
		}
		for _, rep := range reports {
			out, err := exec.Command("perf", append([]string{"report", "-i", data, "--stdio", "--quiet"}, rep.args...)...).Output()
			if err != nil {
				fmt.Printf("perf report %s: %v\n", rep.file, err)
				continue
			}
			os.WriteFile(filepath.Join(dir, name+rep.file), out, 0o644)
			if rep.file == ".sym.txt" {
				lines := strings.Split(strings.TrimSpace(string(out)), "\n")
				fmt.Println(strings.Join(lines[:min(len(lines), 25)], "\n"))
			}
		}
	}
}

// perfStartLimit bounds how long perf may take to start recording: it
// first describes every running process, which under qemu's emulation
// takes seconds. perf is stopped when the transfer ends; should the
// benchmark be gone by then, its workload (sleep) ends it perfTailLimit
// after the longest start and transfer.
const (
	perfStartLimit = 2 * time.Minute
	perfTailLimit  = time.Minute
)

// recordTransfer runs `perf record -a -g` into data over one 1-stream
// transfer of -profile-seconds on p (its lever applied), from the moment
// perf records until the transfer ends, and returns the transfer's result
// and what the receiving host's underlay received meanwhile. The
// machine's background is not measured first (-background is skipped):
// the record would hold that idle second too.
func recordTransfer(p *path, data string) (iperfResult, rxCount, error) {
	var stderr bytes.Buffer
	secs := *profSecs + int((perfStartLimit+perfTailLimit)/time.Second)
	rec := exec.Command("perf", "record", "-a", "-g", "-F", "999", "-o", data, "--", "sleep", strconv.Itoa(secs))
	rec.Stderr = &stderr
	if err := rec.Start(); err != nil {
		return iperfResult{}, rxCount{}, fmt.Errorf("perf record: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- rec.Wait() }()
	stop := func() {
		rec.Process.Signal(os.Interrupt) // perf writes the record and ends its workload
		<-exited
	}
	if err := waitRecording(rec.Process.Pid, perfStartLimit, exited); err != nil {
		stop()
		return iperfResult{}, rxCount{}, fmt.Errorf("%w: %s", err, tail(stderr.Bytes()))
	}
	if err := p.applyLever(); err != nil {
		stop()
		p.revertLever()
		return iperfResult{}, rxCount{}, err
	}
	bg := *bgTime
	*bgTime = 0
	rx0 := p.underlayRx()
	res, err := iperf(p, *profSecs, 1, "")
	rx1 := p.underlayRx()
	stop()
	*bgTime = bg
	p.revertLever()
	return res, rxCount{rx1.packets - rx0.packets, rx1.bytes - rx0.bytes}, err
}

// waitRecording returns once the perf record of pid is recording: perf
// starts its workload (sleep) only after it has enabled its events, and
// the forked child is named perf-exec until then. A fixed wait is not
// enough: under emulation perf took longer to start than the transfer
// lasted, and recorded an idle machine. It reads the kernel's list of
// pid's children (CONFIG_PROC_CHILDREN, which Debian's kernels have) and
// gives up when perf has exited (exited fires; its value is put back).
func waitRecording(pid int, limit time.Duration, exited chan error) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("perf record ended before recording (%v)", err)
		default:
		}
		kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		for _, kid := range strings.Fields(string(kids)) {
			if comm, _ := os.ReadFile("/proc/" + kid + "/comm"); strings.TrimSpace(string(comm)) == "sleep" {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("perf record did not start recording within %v", limit)
}

type rxCount struct{ packets, bytes uint64 }

// underlayRx is what the server's host has received on its underlay link:
// on veth the sender's GSO packets arrive whole, as one packet each.
func (p *path) underlayRx() rxCount {
	switch {
	case p.rxLink != nil:
		return p.rxLink()
	case p.daemon[1] != nil:
		return rxStats(p.daemon[1].Host.NS.Exec("ip", "-s", "-j", "link", "show", dataDev()))
	}
	return rxCount{}
}

// rxStats reads the receive counters from `ip -s -j link show DEV`.
func rxStats(out string, err error) rxCount {
	if err != nil {
		return rxCount{}
	}
	var links []struct {
		Stats64 struct {
			Rx struct {
				Bytes   uint64 `json:"bytes"`
				Packets uint64 `json:"packets"`
			} `json:"rx"`
		} `json:"stats64"`
	}
	if json.Unmarshal([]byte(out), &links) != nil || len(links) == 0 {
		return rxCount{}
	}
	return rxCount{links[0].Stats64.Rx.Packets, links[0].Stats64.Rx.Bytes}
}
