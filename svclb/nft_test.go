//go:build linux

package svclb

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vxnet/vxnet/internal/nstest"
)

// serveName answers each TCP connection on ln with name, then echoes
// what the client writes, until ln closes.
func serveName(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			fmt.Fprintln(c, name)
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				fmt.Fprint(c, line)
			}
		}()
	}
}

// ask connects to addr in ns and returns the first line the server says.
func ask(ns nstest.NS, addr string) (string, net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", nil, err
	}
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return "", nil, err
	}
	c.SetDeadline(time.Time{})
	return strings.TrimSpace(line), c, nil
}

// A VIP's connections spread over its tasks; a new program changes where
// new connections go and leaves established ones where they are; Remove
// takes the VIP away. All in a throwaway namespace, on the real kernel.
func TestProgramSpreadsAndKeepsConnections(t *testing.T) {
	nstest.RequireRoot(t)
	ns := nstest.New(t, "lb")
	// A veth pair, as a container's interface is: eth0 holds the subnet.
	ns.MustIP(t, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	ns.MustIP(t, "link", "set", "eth0", "up")
	ns.MustIP(t, "link", "set", "eth1", "up")
	tasks := []string{"10.99.0.2", "10.99.0.3", "10.99.0.4"}
	for _, a := range tasks {
		ns.MustIP(t, "addr", "add", a+"/24", "dev", "eth0")
		ln, err := ns.Listen("tcp", a+":80")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go serveName(ln, a)
	}
	const nid = "0123456789abcdef0123"
	vip := "10.99.0.50"
	svc := Service{Name: "web", VIP: netip.MustParseAddr(vip)}
	for _, a := range tasks {
		svc.Tasks = append(svc.Tasks, netip.MustParseAddr(a))
	}
	if err := Program(ns.Path(), nid, []Service{svc}); err != nil {
		t.Fatal(err)
	}
	if out, err := ns.Exec("nft", "list", "table", "ip", TableName(nid)); err != nil {
		t.Logf("nft list (for the record): %v %s", err, out)
	} else {
		t.Logf("%s", out)
	}

	got := map[string]int{}
	var held net.Conn // a connection to 10.99.0.4, kept across the next program
	for i := 0; i < 60; i++ {
		name, c, err := ask(ns, vip+":80")
		if err != nil {
			t.Fatalf("connection %d to the VIP: %v", i, err)
		}
		got[name]++
		if name == "10.99.0.4" && held == nil {
			held = c
			continue
		}
		c.Close()
	}
	for _, a := range tasks {
		if got[a] < 5 {
			t.Errorf("task %s got %d of 60 connections; want a spread over all three: %v", a, got[a], got)
		}
	}
	if held == nil {
		t.Fatal("no connection reached 10.99.0.4")
	}
	defer held.Close()

	// UDP too: a datagram to the VIP reaches a task, and its answer comes
	// back from the VIP (conntrack un-NATs it), so a connected socket takes it.
	for _, a := range tasks {
		var pc net.PacketConn
		if err := ns.Do(func() (err error) { pc, err = net.ListenPacket("udp", a+":53"); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 64)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo([]byte(a), from)
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	uc, err := ns.Dial(ctx, "udp", vip+":53")
	if err != nil {
		t.Fatal(err)
	}
	uc.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	if _, err := uc.Write([]byte("who")); err != nil {
		t.Fatal(err)
	}
	if n, err := uc.Read(buf); err != nil || !slices.Contains(tasks, string(buf[:n])) {
		t.Errorf("UDP to the VIP: %q %v; want a task's answer", buf[:n], err)
	}
	uc.Close()

	// Scale down to the first two tasks: new connections go there only,
	// the held one still talks to 10.99.0.4.
	svc.Tasks = svc.Tasks[:2]
	if err := Program(ns.Path(), nid, []Service{svc}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		name, c, err := ask(ns, vip+":80")
		if err != nil {
			t.Fatalf("after the scale-down, connection %d: %v", i, err)
		}
		c.Close()
		if name == "10.99.0.4" {
			t.Fatalf("a new connection reached the task taken out")
		}
	}
	held.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintln(held, "still-there")
	if line, err := bufio.NewReader(held).ReadString('\n'); err != nil || line != "still-there\n" {
		t.Errorf("established connection after the new program: %q %v; want its echo", line, err)
	}

	// No task: no rule, nothing answers (the VIP is no address here, so
	// the connection is refused or times out).
	if err := Program(ns.Path(), nid, []Service{{Name: "web", VIP: svc.VIP}}); err != nil {
		t.Fatal(err)
	}
	if name, c, err := ask(ns, vip+":80"); err == nil {
		c.Close()
		t.Errorf("a VIP without tasks answered as %s", name)
	}
	if err := Remove(ns.Path(), nid); err != nil {
		t.Fatal(err)
	}
	if out, err := ns.Exec("nft", "list", "tables"); err != nil || strings.Contains(out, TableName(nid)) {
		t.Errorf("table left after Remove: %v %s", err, out)
	}
	if err := Remove(ns.Path(), nid); err != nil {
		t.Errorf("second Remove: %v; want none (gone is done)", err)
	}
	if err := Remove("/run/netns/vxnet-no-such-namespace", nid); err != nil {
		t.Errorf("Remove in a namespace gone: %v; want none", err)
	}
}
