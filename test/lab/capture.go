package lab

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"

	"github.com/vxnet/vxnet/internal/nstest"
	"golang.org/x/sys/unix"
)

// Capture records the frames seen on one interface of a namespace, both
// directions, like `tcpdump -i DEV` (without needing tcpdump).
type Capture struct {
	fd   int
	done chan struct{}
	mu   sync.Mutex
	pkts [][]byte // IPv4 and IPv6 packets, without the Ethernet header
}

// StartCapture starts capturing on dev in ns.
func StartCapture(ns nstest.NS, dev string) (*Capture, error) {
	c := &Capture{fd: -1, done: make(chan struct{})}
	proto := int(uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8) // network byte order
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, proto)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture on %s: %w", dev, err)
	}
	unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	go c.loop()
	return c, nil
}

func (c *Capture) loop() {
	buf := make([]byte, 65536)
	for {
		select {
		case <-c.done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil || n < 14+20 {
			continue
		}
		if et := binary.BigEndian.Uint16(buf[12:14]); et != 0x0800 && (et != 0x86dd || n < 14+40) {
			continue
		}
		c.mu.Lock()
		if len(c.pkts) < 200000 {
			c.pkts = append(c.pkts, append([]byte(nil), buf[14:n]...))
		}
		c.mu.Unlock()
	}
}

// Stop ends the capture and returns what it saw.
func (c *Capture) Stop() Packets {
	close(c.done)
	c.mu.Lock()
	defer c.mu.Unlock()
	unix.Close(c.fd)
	return Packets(c.pkts)
}

// Packets are captured IPv4 and IPv6 packets.
type Packets [][]byte

// ipv6Fragment is IPv6's fragment extension header (next header 44).
const ipv6Fragment = 44

func l4(p []byte) (proto byte, payload []byte, fragment bool) {
	if p[0]>>4 == 6 {
		// The extension headers vxnet's traffic may carry: a fragment
		// header, which hides the rest.
		if p[6] == ipv6Fragment {
			return ipv6Fragment, nil, true
		}
		return p[6], p[40:], false
	}
	ihl := int(p[0]&0x0f) * 4
	if len(p) < ihl {
		return 0, nil, false
	}
	flags := binary.BigEndian.Uint16(p[6:8])
	return p[9], p[ihl:], flags&0x2000 != 0 || flags&0x1fff != 0
}

// ESP counts ESP packets.
func (ps Packets) ESP() int {
	n := 0
	for _, p := range ps {
		if proto, _, _ := l4(p); proto == unix.IPPROTO_ESP {
			n++
		}
	}
	return n
}

// VXLAN counts plaintext VXLAN packets to port 4789 by VNI.
func (ps Packets) VXLAN() map[uint32]int {
	out := map[uint32]int{}
	for _, p := range ps {
		proto, u, _ := l4(p)
		if proto == unix.IPPROTO_UDP && len(u) >= 16 && binary.BigEndian.Uint16(u[2:4]) == 4789 {
			out[binary.BigEndian.Uint32(u[12:16])>>8]++
		}
	}
	return out
}

// Fragments counts IP fragments.
func (ps Packets) Fragments() int {
	n := 0
	for _, p := range ps {
		if _, _, frag := l4(p); frag {
			n++
		}
	}
	return n
}

// EchoRequests counts ICMP echo requests with identifier id.
func (ps Packets) EchoRequests(id uint16) int {
	n := 0
	for _, p := range ps {
		proto, ic, _ := l4(p)
		if proto == unix.IPPROTO_ICMP && len(ic) >= 8 && ic[0] == 8 && binary.BigEndian.Uint16(ic[4:6]) == id {
			n++
		}
	}
	return n
}

// VXLANEcho builds a plaintext VXLAN packet (the UDP payload) for vni that
// carries an ICMP echo request with identifier id from (srcMAC, srcIP) to
// (dstMAC, dstIP): what an attacker on the underlay would inject.
func VXLANEcho(vni uint32, srcMAC, dstMAC net.HardwareAddr, srcIP, dstIP net.IP, id uint16) []byte {
	icmp := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, 1, 'v', 'x', 'n', 'e', 't'}
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	ip := make([]byte, 20, 20+len(icmp))
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_ICMP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	copy(ip[12:16], srcIP.To4())
	copy(ip[16:20], dstIP.To4())
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	ip = append(ip, icmp...)
	frame := append(append(append([]byte{}, dstMAC...), srcMAC...), 0x08, 0x00)
	frame = append(frame, ip...)
	hdr := []byte{0x08, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}
	return append(hdr, frame...)
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}
