package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vxnet/vxnet/internal/statefile"
	"github.com/vxnet/vxnet/vxlan"
)

// The node's own state — its networks and endpoints — is saved to a file
// after every change, because Docker does not replay CreateNetwork,
// CreateEndpoint or Join to a plugin that restarts: whatever the plugin
// knew must come back from disk. The kernel state (pinned namespaces)
// outlives the process; the file says what it belongs to.

type savedState struct {
	Networks []savedNetwork `json:"networks"`
}

type savedNetwork struct {
	NID       string          `json:"nid"`
	CID       string          `json:"cid,omitempty"`
	MTU       int             `json:"mtu"`
	Encrypted bool            `json:"encrypted,omitempty"`
	Subnets   []vxlan.Subnet  `json:"subnets"`
	Endpoints []savedEndpoint `json:"endpoints"`
}

type savedEndpoint struct {
	EID      string       `json:"eid"`
	Addr     netip.Prefix `json:"addr"`
	MAC      string       `json:"mac"`
	VNI      uint32       `json:"vni"`
	IfName   string       `json:"ifname"`
	Attached bool         `json:"attached"`
}

// save writes the node's state. Failures are logged: the running driver
// is right either way, only a restart would lose what was not saved.
// d.mu must be held.
func (d *Driver) save() {
	if d.cfg.StateFile == "" {
		return
	}
	var st savedState
	for _, n := range d.networks {
		sn := savedNetwork{NID: n.nid, CID: n.cid, MTU: n.mtu, Encrypted: n.encrypted, Subnets: n.subnets}
		for _, ep := range n.endpoints {
			sn.Endpoints = append(sn.Endpoints, savedEndpoint{
				EID: ep.eid, Addr: ep.addr, MAC: ep.mac.String(), VNI: ep.vni, IfName: ep.ifName, Attached: ep.attached,
			})
		}
		st.Networks = append(st.Networks, sn)
	}
	if err := statefile.Write(d.cfg.StateFile, st); err != nil {
		d.log.WithError(err).Error("saving node state; a plugin restart would forget changes since the last save")
	}
}

// Restore loads the state a previous run saved and checks it against the
// kernel: an endpoint counts as attached only if its network's namespace
// still exists (a host reboot empties /run). Pinned namespaces that belong
// to no attached network are removed. Call it before serving Docker; the
// first full table from etcd then reconciles every attached network's
// peers.
func (d *Driver) Restore() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg.StateFile == "" {
		return nil
	}
	b, err := os.ReadFile(d.cfg.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		b = []byte("{}")
	} else if err != nil {
		return fmt.Errorf("read node state: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		aside := d.cfg.StateFile + ".corrupt"
		d.log.WithError(err).Errorf("node state unreadable; moved to %s, starting empty", aside)
		os.Rename(d.cfg.StateFile, aside)
		st = savedState{}
	}
	for _, sn := range st.Networks {
		n := &network{nid: sn.NID, cid: sn.CID, mtu: sn.MTU, encrypted: sn.Encrypted, subnets: sn.Subnets, endpoints: map[string]*endpoint{}}
		if n.cid == "" {
			n.cid = n.nid
		}
		present := d.plane.HasNetwork(sn.NID)
		for _, se := range sn.Endpoints {
			mac, err := net.ParseMAC(se.MAC)
			if err != nil {
				return fmt.Errorf("node state: endpoint %s: %w", se.EID, err)
			}
			ep := &endpoint{eid: se.EID, addr: se.Addr, mac: mac, vni: se.VNI, ifName: se.IfName, attached: se.Attached && present}
			if ep.attached {
				n.attached++
			}
			n.endpoints[ep.eid] = ep
		}
		d.networks[n.nid] = n
		if n.encrypted && n.attached > 0 {
			if d.cfg.Encryption == nil {
				return fmt.Errorf("node state holds encrypted network %s, but encryption is off", n.nid)
			}
			if err := d.cfg.Encryption.restore(n.vnis()); err != nil {
				return err
			}
		}
	}
	pinned, err := d.plane.Networks()
	if err != nil {
		return err
	}
	for _, nid := range pinned {
		if n, ok := d.networks[nid]; !ok || n.attached == 0 {
			d.log.WithField("nid", nid).Info("removing a namespace no endpoint uses")
			if err := d.plane.RemoveNetwork(nid); err != nil {
				return err
			}
		}
	}
	d.log.WithField("networks", len(d.networks)).Info("node state restored")
	return nil
}
