//go:build linux

package svclb

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netns"
	"github.com/vxnet/vxnet/internal/nsthread"
	"golang.org/x/net/dns/dnsmessage"
)

// Docker's embedded DNS server: every container on a user-defined
// network asks it at this address, inside its own namespace.
const (
	embeddedDNS = "127.0.0.11:53"
	// dnsTimeout bounds one question to it, connect to answer.
	dnsTimeout = 500 * time.Millisecond
	// maxDNSAnswer is the largest answer read (TCP: 2-byte length).
	maxDNSAnswer = 65535
)

// enabledTasks asks Docker's embedded DNS, from inside the container
// namespace at nsPath, for tasks.NAME: the addresses of the tasks of
// service name that Docker balances to. Swarm takes a task out of that
// answer when it disables it, 2 s (moby's defaultGossipConvergeDelay)
// before its stop signal, and puts a task with a health check in only
// once it is healthy: the moments Docker's own balancer uses, which the
// API's task list does not show. The question goes over TCP, so a
// service of many tasks is not truncated. NXDOMAIN is an empty answer.
func enabledTasks(nsPath, name string) (map[netip.Addr]bool, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open container namespace: %w", err)
	}
	defer ns.Close()
	ctx, cancel := context.WithTimeout(context.Background(), dnsTimeout)
	defer cancel()
	var conn net.Conn
	if err := nsthread.In(ns, func() error {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", embeddedDNS)
		return err
	}); err != nil {
		return nil, fmt.Errorf("Docker's embedded DNS in %s: %w", nsPath, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(dnsTimeout))

	q, err := dnsmessage.NewName("tasks." + name + ".")
	if err != nil {
		return nil, fmt.Errorf("service name %q: %w", name, err)
	}
	id := uint16(time.Now().UnixNano())
	msg := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: q, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}
	b, err := msg.AppendPack(make([]byte, 2, 64))
	if err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint16(b, uint16(len(b)-2))
	if _, err := conn.Write(b); err != nil {
		return nil, fmt.Errorf("ask Docker's embedded DNS for %s: %w", q, err)
	}
	var n [2]byte
	if _, err := io.ReadFull(conn, n[:]); err != nil {
		return nil, fmt.Errorf("answer of Docker's embedded DNS for %s: %w", q, err)
	}
	ans := make([]byte, binary.BigEndian.Uint16(n[:]))
	if _, err := io.ReadFull(conn, ans); err != nil {
		return nil, fmt.Errorf("answer of Docker's embedded DNS for %s: %w", q, err)
	}
	var p dnsmessage.Parser
	h, err := p.Start(ans)
	if err != nil {
		return nil, fmt.Errorf("answer of Docker's embedded DNS for %s: %w", q, err)
	}
	if h.ID != id || !h.Response {
		return nil, fmt.Errorf("answer of Docker's embedded DNS for %s: not the answer to the question", q)
	}
	out := map[netip.Addr]bool{}
	switch h.RCode {
	case dnsmessage.RCodeNameError:
		return out, nil
	case dnsmessage.RCodeSuccess:
	default:
		return nil, fmt.Errorf("Docker's embedded DNS answers %s for %s", h.RCode, q)
	}
	if err := p.SkipAllQuestions(); err != nil {
		return nil, err
	}
	for {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("answer of Docker's embedded DNS for %s: %w", q, err)
		}
		if rh.Type != dnsmessage.TypeA {
			if err := p.SkipAnswer(); err != nil {
				return nil, err
			}
			continue
		}
		a, err := p.AResource()
		if err != nil {
			return nil, fmt.Errorf("answer of Docker's embedded DNS for %s: %w", q, err)
		}
		out[netip.AddrFrom4(a.A)] = true
	}
}
