//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// cpuTimes is what the machine's CPUs did, from the "cpu" line of
// /proc/stat. All simulated hosts share this one kernel, so it counts the
// sender's and the receiver's work together, and whatever else runs.
//
// Busy time is taken as wall time × CPUs less idle and iowait: this
// kernel (TICK_CPU_ACCOUNTING, HZ 250, no IRQ_TIME_ACCOUNTING) splits
// busy time into user, system and softirq by sampling at the tick, which
// aliases with a transfer paced by a 1 ms timer (iperf3 -b) and was off
// by a factor of 3 in a trial; idle time is measured exactly on a
// tickless kernel (get_cpu_idle_time_us). Steal is what the hypervisor
// took from this virtual machine: others' load outside it.
type cpuTimes struct {
	at          time.Time
	idle, steal float64 // seconds, all CPUs
}

// userHZ is the unit of /proc/stat.
const userHZ = 100

func readCPU() cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	now := time.Now()
	if err != nil {
		return cpuTimes{at: now}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	v := make([]float64, len(f))
	for i := 1; i < len(f); i++ {
		n, _ := strconv.ParseUint(f[i], 10, 64)
		v[i] = float64(n) / userHZ
	}
	if len(v) < 9 {
		return cpuTimes{at: now}
	}
	return cpuTimes{at: now, idle: v[4] + v[5], steal: v[8]}
}

// cpuUse is the CPU time used between two readings.
type cpuUse struct {
	wall, busy, steal float64 // seconds; busy and steal summed over CPUs
}

// percent is busy and steal as percentages of the machine's CPU time
// over the interval (wall time on every CPU).
func (u cpuUse) percent() (busy, steal float64) {
	cpuSecs := u.wall * float64(runtime.NumCPU())
	return 100 * u.busy / cpuSecs, 100 * u.steal / cpuSecs
}

func (c cpuTimes) since(o cpuTimes) cpuUse {
	wall := c.at.Sub(o.at).Seconds()
	return cpuUse{wall: wall, busy: wall*float64(runtime.NumCPU()) - (c.idle - o.idle), steal: c.steal - o.steal}
}

// iperfResult is one iperf3 test.
type iperfResult struct {
	Gbps      float64
	GB        float64 // gigabytes received
	MachineS  float64 // machine CPU-seconds (all CPUs, /proc/stat) during the test, less the background
	BgCPUs    float64 // the background: CPUs busy in the interval just before the test
	SenderS   float64 // the sending iperf3 process's CPU-seconds (its own figure)
	ReceiverS float64 // the receiving one's
}

// perGB is CPU-seconds per gigabyte moved.
func (r iperfResult) perGB(s float64) float64 {
	if r.GB == 0 {
		return math.NaN()
	}
	return s / r.GB
}

// iperf runs one iperf3 client against the path's server: streams
// parallel streams, at rate (iperf3 -b; empty: as fast as it goes).
func iperf(p *path, secs, streams int, rate string) (iperfResult, error) {
	args := p.client("iperf3", "-c", p.srvIP, "-t", strconv.Itoa(secs), "-J")
	if streams > 1 {
		args = append(args, "-P", strconv.Itoa(streams))
	}
	if rate != "" {
		args = append(args, "-b", rate)
	}
	// The machine's CPU use just before the test, with none of ours
	// running (the lab's daemons, other people's work), is taken off.
	quiet := readCPU()
	time.Sleep(*bgTime)
	before := readCPU()
	bg := before.since(quiet)
	out, err := exec.Command("nsenter", args...).Output()
	used := readCPU().since(before)
	if err != nil {
		return iperfResult{}, fmt.Errorf("iperf3 to %s (%s): %v %s", p.srvIP, p.name, err, tail(out))
	}
	var res struct {
		End struct {
			SumReceived struct {
				Seconds       float64 `json:"seconds"`
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			CPU struct {
				Host   float64 `json:"host_total"`
				Remote float64 `json:"remote_total"`
			} `json:"cpu_utilization_percent"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return iperfResult{}, fmt.Errorf("iperf3 output: %v", err)
	}
	if res.Error != "" {
		return iperfResult{}, fmt.Errorf("iperf3 to %s (%s): %s", p.srvIP, p.name, res.Error)
	}
	s := res.End.SumReceived
	return iperfResult{
		Gbps:      s.BitsPerSecond / 1e9,
		GB:        s.Bytes / 1e9,
		MachineS:  machineS(used, bg),
		BgCPUs:    bg.busy / bg.wall,
		SenderS:   res.End.CPU.Host / 100 * s.Seconds,
		ReceiverS: res.End.CPU.Remote / 100 * s.Seconds,
	}, nil
}

// maxBackground is the background, in CPUs, above which a test's machine
// CPU figure is not kept: someone else's work that large varies more
// within a test than the test's own use.
const maxBackground = 0.25

// machineS is the machine's CPU-seconds during a test less the
// background bg, or NaN if the background was above maxBackground.
func machineS(used, bg cpuUse) float64 {
	if bg.wall <= 0 || bg.busy/bg.wall > maxBackground {
		return math.NaN()
	}
	return used.busy - bg.busy/bg.wall*used.wall
}

// rr runs `bench rr` in the client's namespace against the path's server.
func rr(p *path, proto string, secs float64) (rrResult, error) {
	self, err := os.Executable()
	if err != nil {
		return rrResult{}, err
	}
	args := p.client(self, "rr", "-proto", proto, "-addr", p.srvIP+":"+strconv.Itoa(rrPort), "-d", fmt.Sprintf("%gs", secs))
	out, err := exec.Command("nsenter", args...).CombinedOutput()
	if err != nil {
		return rrResult{}, fmt.Errorf("%s rr to %s (%s): %v %s", proto, p.srvIP, p.name, err, tail(out))
	}
	var res rrResult
	if err := json.Unmarshal(out, &res); err != nil {
		return rrResult{}, fmt.Errorf("%s rr output: %v: %s", proto, err, tail(out))
	}
	return res, nil
}

func tail(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 400 {
		s = "…" + s[len(s)-400:]
	}
	return s
}
