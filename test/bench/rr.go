//go:build linux

package main

// The request/response tools: busybox has none, and Debian's netperf is
// not in main. The benchmark runs this same binary inside a container's
// network namespace (nsenter -n, the host's file system stays visible):
//
//	bench serve ADDR          TCP and UDP echo of single bytes on ADDR
//	bench rr -proto P -addr ADDR -d D
//
// P is tcp (1-byte request, 1-byte response on one connection, like
// netperf's TCP_RR), udp (the same with datagrams, UDP_RR) or crr (a new
// connection per transaction: connect, 1 byte each way, close; TCP_CRR).
// The client closes with SO_LINGER 0, a reset: a clean close would leave
// one TIME_WAIT socket per transaction in the client's namespace and run
// out of ports within seconds at these rates.
//
// Both use blocking system calls on a locked OS thread, not Go's net
// package: the netpoller would add an epoll round to every transaction,
// which is the harness's cost, not the path's. One transaction is in
// flight at a time, so latency is a round trip and the rate its inverse.

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"syscall"
	"time"
)

// rrResult is what `bench rr` prints, as JSON.
type rrResult struct {
	N      int     `json:"n"`       // transactions completed
	Rate   float64 `json:"rate"`    // transactions per second
	P50    float64 `json:"p50_us"`  // round trip, µs
	P99    float64 `json:"p99_us"`  // round trip, µs
	Lost   int     `json:"lost"`    // udp: requests with no answer within 200 ms
	Errors int     `json:"errors"`  // crr: failed connects
	Secs   float64 `json:"seconds"` // measured time
}

// rrPort is where `bench serve` listens, TCP and UDP.
const rrPort = 7001

// warmup transactions are made before measuring: the first ones pay for
// ARP, the neighbour lookup and page faults.
const warmup = 200

func sockaddr(ap netip.AddrPort) *syscall.SockaddrInet4 {
	return &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
}

// serveMain is `bench serve ADDR`: it prints "ready" once both sockets
// listen and serves until killed.
func serveMain(args []string) {
	if len(args) != 1 {
		fatal(errors.New("usage: bench serve IP:PORT"))
	}
	ap, err := netip.ParseAddrPort(args[0])
	if err != nil {
		fatal(err)
	}
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		fatal(err)
	}
	syscall.SetsockoptInt(lfd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if err := syscall.Bind(lfd, sockaddr(ap)); err != nil {
		fatal(fmt.Errorf("bind tcp %s: %w", ap, err))
	}
	if err := syscall.Listen(lfd, 1024); err != nil {
		fatal(err)
	}
	ufd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		fatal(err)
	}
	if err := syscall.Bind(ufd, sockaddr(ap)); err != nil {
		fatal(fmt.Errorf("bind udp %s: %w", ap, err))
	}
	go func() {
		runtime.LockOSThread()
		buf := make([]byte, 64)
		for {
			n, from, err := syscall.Recvfrom(ufd, buf, 0)
			if err != nil || n == 0 {
				continue
			}
			syscall.Sendto(ufd, buf[:n], 0, from)
		}
	}()
	fmt.Println("ready")
	for {
		fd, _, err := syscall.Accept4(lfd, syscall.SOCK_CLOEXEC)
		if err != nil {
			continue
		}
		go echoConn(fd)
	}
}

// echoConn answers each byte read on fd with one byte, until the peer
// closes or resets.
func echoConn(fd int) {
	runtime.LockOSThread()
	defer syscall.Close(fd)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	buf := make([]byte, 1)
	for {
		n, err := syscall.Read(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if n <= 0 || err != nil {
			return
		}
		if _, err := syscall.Write(fd, buf[:1]); err != nil {
			return
		}
	}
}

// rrMain is `bench rr`: it measures and prints an rrResult.
func rrMain(args []string) {
	fs := flag.NewFlagSet("rr", flag.ExitOnError)
	proto := fs.String("proto", "tcp", "tcp, udp or crr")
	addr := fs.String("addr", "", "server IP:PORT")
	d := fs.Duration("d", 2*time.Second, "how long to measure")
	fs.Parse(args)
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil {
		fatal(err)
	}
	runtime.LockOSThread()
	var res rrResult
	switch *proto {
	case "tcp":
		res, err = tcpRR(ap, *d)
	case "udp":
		res, err = udpRR(ap, *d)
	case "crr":
		res, err = tcpCRR(ap, *d)
	default:
		err = fmt.Errorf("unknown -proto %q", *proto)
	}
	if err != nil {
		fatal(err)
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// exchange writes one byte on fd and reads one back.
func exchange(fd int, buf []byte) error {
	if _, err := syscall.Write(fd, buf[:1]); err != nil {
		return err
	}
	for {
		n, err := syscall.Read(fd, buf[:1])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n != 1 {
			return errors.New("connection closed")
		}
		return nil
	}
}

func tcpConnect(ap netip.AddrPort) (int, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	if err := syscall.Connect(fd, sockaddr(ap)); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

func tcpRR(ap netip.AddrPort, d time.Duration) (rrResult, error) {
	fd, err := tcpConnect(ap)
	if err != nil {
		return rrResult{}, fmt.Errorf("connect %s: %w", ap, err)
	}
	defer syscall.Close(fd)
	buf := make([]byte, 1)
	for range warmup {
		if err := exchange(fd, buf); err != nil {
			return rrResult{}, err
		}
	}
	lat := make([]float64, 0, 1<<18)
	start := time.Now()
	end := start.Add(d)
	for t0 := start; t0.Before(end); {
		if err := exchange(fd, buf); err != nil {
			return rrResult{}, err
		}
		t1 := time.Now()
		lat = append(lat, float64(t1.Sub(t0).Nanoseconds())/1e3)
		t0 = t1
	}
	return summarize(lat, time.Since(start)), nil
}

func udpRR(ap netip.AddrPort, d time.Duration) (rrResult, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return rrResult{}, err
	}
	defer syscall.Close(fd)
	if err := syscall.Connect(fd, sockaddr(ap)); err != nil {
		return rrResult{}, err
	}
	tv := syscall.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	buf := make([]byte, 1)
	lost := 0
	for range warmup {
		if exchange(fd, buf) != nil {
			lost++
		}
	}
	if lost == warmup {
		return rrResult{}, fmt.Errorf("no UDP answer from %s", ap)
	}
	lost = 0
	lat := make([]float64, 0, 1<<18)
	start := time.Now()
	end := start.Add(d)
	for t0 := start; t0.Before(end); {
		err := exchange(fd, buf)
		t1 := time.Now()
		if err != nil {
			lost++ // timed out: not a round trip, not counted in latency
		} else {
			lat = append(lat, float64(t1.Sub(t0).Nanoseconds())/1e3)
		}
		t0 = t1
	}
	res := summarize(lat, time.Since(start))
	res.Lost = lost
	return res, nil
}

func tcpCRR(ap netip.AddrPort, d time.Duration) (rrResult, error) {
	buf := make([]byte, 1)
	reset := &syscall.Linger{Onoff: 1, Linger: 0}
	one := func() error {
		fd, err := tcpConnect(ap)
		if err != nil {
			return err
		}
		err = exchange(fd, buf)
		syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, reset)
		syscall.Close(fd)
		return err
	}
	for range warmup {
		if err := one(); err != nil {
			return rrResult{}, fmt.Errorf("connect %s: %w", ap, err)
		}
	}
	errs := 0
	lat := make([]float64, 0, 1<<17)
	start := time.Now()
	end := start.Add(d)
	for t0 := start; t0.Before(end); {
		err := one()
		t1 := time.Now()
		if err != nil {
			errs++
		} else {
			lat = append(lat, float64(t1.Sub(t0).Nanoseconds())/1e3)
		}
		t0 = t1
	}
	res := summarize(lat, time.Since(start))
	res.Errors = errs
	return res, nil
}

func summarize(lat []float64, elapsed time.Duration) rrResult {
	slices.Sort(lat)
	return rrResult{
		N:    len(lat),
		Rate: float64(len(lat)) / elapsed.Seconds(),
		P50:  percentile(lat, 50),
		P99:  percentile(lat, 99),
		Secs: elapsed.Seconds(),
	}
}
