//go:build linux

package svclb

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/vxnet/vxnet/internal/nstest"
	"golang.org/x/net/dns/dnsmessage"
)

// serveDNS answers questions over TCP on ln as Docker's embedded DNS
// does: the A records of records[name], or NXDOMAIN.
func serveDNS(ln net.Listener, records map[string][][4]byte) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var n [2]byte
			if _, err := io.ReadFull(c, n[:]); err != nil {
				return
			}
			q := make([]byte, binary.BigEndian.Uint16(n[:]))
			if _, err := io.ReadFull(c, q); err != nil {
				return
			}
			var m dnsmessage.Message
			if err := m.Unpack(q); err != nil || len(m.Questions) != 1 {
				return
			}
			m.Response = true
			name := m.Questions[0].Name.String()
			addrs, ok := records[name]
			if !ok {
				m.RCode = dnsmessage.RCodeNameError
			}
			for _, a := range addrs {
				m.Answers = append(m.Answers, dnsmessage.Resource{
					Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 600},
					Body:   &dnsmessage.AResource{A: a},
				})
			}
			b, _ := m.AppendPack(make([]byte, 2, 512))
			binary.BigEndian.PutUint16(b, uint16(len(b)-2))
			c.Write(b)
		}()
	}
}

func TestEnabledTasks(t *testing.T) {
	nstest.RequireRoot(t)
	ns := nstest.New(t, "dns")
	if _, err := enabledTasks(ns.Path(), "web"); err == nil {
		t.Errorf("a namespace without Docker's DNS answered")
	}
	ln, err := ns.Listen("tcp", embeddedDNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveDNS(ln, map[string][][4]byte{"tasks.web.": {{198, 18, 70, 3}, {198, 18, 70, 4}}})
	got, err := enabledTasks(ns.Path(), "web")
	if err != nil || fmt.Sprint(got) != "map[198.18.70.3:true 198.18.70.4:true]" {
		t.Errorf("tasks.web: %v %v; want 198.18.70.3 and .4", got, err)
	}
	got, err = enabledTasks(ns.Path(), "gone")
	if err != nil || len(got) != 0 {
		t.Errorf("tasks.gone: %v %v; want none, no error (NXDOMAIN)", got, err)
	}
}
