package peerdb

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"io"
	"log"
	"net"
	"sync"

	"github.com/hashicorp/memberlist"
)

// Direct messages carry an endpoint change to the members that use its
// network, and to no one else: serf's user events reach every member of
// the cluster, and serf cannot send to one member (what it receives
// directly it gossips on). So vxnet shares serf's UDP socket: a packet
// that starts with directTag is vxnet's, every other one is memberlist's.
//
// A direct packet is
//
//	directTag | nonce (12 bytes) | AES-GCM(key, nonce, payload, directContext)
//
// under the cluster's gossip key in use (any key of the keyring opens it),
// so a host without the gossip key can neither read nor forge one; the
// payload is a SignedUpdate, checked like any other (Table.Gossip).

const (
	// directTag starts a direct packet: memberlist's packets start with an
	// encryption version (0, 1), a message type (< 32) or its label tag
	// (244).
	directTag = 0xf7
	// directContext binds a sealed packet to vxnet's direct messages.
	directContext = "vxnet direct v1"
	// maxDirectSize bounds a direct packet, sealed: one signed change is
	// under 1 KiB, and a packet must fit a UDP datagram unfragmented on
	// any underlay worth using.
	maxDirectSize = 1400
	nonceSize     = 12
)

// directTransport is memberlist's UDP and TCP transport with vxnet's
// direct packets taken out of its packet stream.
type directTransport struct {
	*memberlist.NetTransport
	packets chan *memberlist.Packet
	ring    *memberlist.Keyring
	deliver func(payload []byte, from net.Addr)
	closing chan struct{} // closed as Shutdown starts: packets are dropped
	stop    chan struct{} // closed once the sockets are shut: split ends
	once    sync.Once
}

// newDirectTransport listens on addr:port for memberlist and direct
// packets; deliver gets each direct packet's payload, opened.
func newDirectTransport(addr string, port int, ring *memberlist.Keyring, deliver func([]byte, net.Addr)) (*directTransport, error) {
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{addr}, BindPort: port, Logger: discardLogger()})
	if err != nil {
		return nil, err
	}
	t := &directTransport{NetTransport: nt, packets: make(chan *memberlist.Packet), ring: ring, deliver: deliver,
		closing: make(chan struct{}), stop: make(chan struct{})}
	go t.split()
	return t, nil
}

// split hands memberlist its packets and opens vxnet's, until Shutdown.
func (t *directTransport) split() {
	in := t.NetTransport.PacketCh()
	for {
		var p *memberlist.Packet
		select {
		case p = <-in:
		case <-t.stop:
			return
		}
		if len(p.Buf) > 0 && p.Buf[0] == directTag {
			if payload, err := openDirect(t.ring.GetKeys(), p.Buf); err == nil {
				t.deliver(payload, p.From)
			}
			continue // a packet that does not open is dropped, like memberlist's
		}
		select {
		case t.packets <- p:
		case <-t.closing: // memberlist may read no more
		case <-t.stop:
			return
		}
	}
}

// PacketCh is memberlist's packet stream, without vxnet's packets.
func (t *directTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

// Shutdown stops the sockets, then the split: the sockets' readers may be
// handing it a last packet, which it must take for them to end.
func (t *directTransport) Shutdown() error {
	var err error
	t.once.Do(func() {
		close(t.closing)
		err = t.NetTransport.Shutdown()
		close(t.stop)
	})
	return err
}

// send seals payload under the key in use and sends it to addr
// (host:port).
func (t *directTransport) send(payload []byte, addr string) error {
	b, err := sealDirect(t.ring.GetPrimaryKey(), payload)
	if err != nil {
		return err
	}
	_, err = t.NetTransport.WriteTo(b, addr)
	return err
}

var errDirectSize = errors.New("direct message too large")

func sealDirect(key, payload []byte) ([]byte, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if 1+nonceSize+len(payload)+gcm.Overhead() > maxDirectSize {
		return nil, errDirectSize
	}
	out := make([]byte, 1+nonceSize, 1+nonceSize+len(payload)+gcm.Overhead())
	out[0] = directTag
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, err
	}
	return gcm.Seal(out, out[1:], payload, []byte(directContext)), nil
}

// openDirect opens a direct packet with any of keys.
func openDirect(keys [][]byte, b []byte) ([]byte, error) {
	if len(b) < 1+nonceSize || len(b) > maxDirectSize || b[0] != directTag {
		return nil, errors.New("not a direct packet")
	}
	for _, k := range keys {
		gcm, err := newGCM(k)
		if err != nil {
			continue
		}
		if p, err := gcm.Open(nil, b[1:1+nonceSize], b[1+nonceSize:], []byte(directContext)); err == nil {
			return p, nil
		}
	}
	return nil, errors.New("no gossip key opens it")
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }
