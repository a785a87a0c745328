// Package ipsec encrypts the VXLAN traffic of vxnet's encrypted networks
// between hosts: node keys and the keys derived from them (keys.go), the
// kernel's IPsec state (xfrm_linux.go) and the firewall that keeps
// plaintext out (firewall_linux.go). It programs the kernel and keeps no
// state; the driver decides what to program.
//
// # Terms
//
//   - ESP: Encapsulating Security Payload, the IPsec protocol (IP protocol
//     50) that encrypts and authenticates a packet's payload.
//   - Transport mode: ESP goes between a packet's IP header and its
//     payload; the addresses stay those of the two hosts. vxnet encrypts
//     the VXLAN UDP packets this way, so an encrypted packet is the plain
//     one plus ESP's overhead, and no tunnel device is needed.
//   - SA (security association, an xfrm "state"): one direction of
//     protection between two addresses: key, algorithm, sequence counter,
//     replay window. A receiver finds it by (destination, SPI).
//   - SPI: the 32-bit number in each ESP header that names the SA.
//   - ICV: the integrity check value, the authentication tag of each
//     packet. vxnet uses a 128-bit one (the stock overlay: 64 bits).
//   - Policy (xfrm "policy"): which packets must be protected, and by which
//     SA. vxnet's select the VXLAN packets to one remote host that carry
//     the firewall's mark, so only encrypted networks' VNIs are encrypted.
//   - Epoch: a generation of keys. Each host says, in its key record, the
//     epoch it holds inbound SAs for; a sender uses the receiver's.
//
// # Keys
//
// Every host has its own X25519 key pair; the private key is a 0600 file
// in the plugin's state directory and never leaves it. The public key is
// published in etcd with the host's epoch. The key of each direction
// between two hosts, in each epoch, is derived on both ends with HKDF from
// their X25519 shared secret, the two data addresses in order and the
// epoch (Derive): every ordered pair of hosts has its own key, no host can
// compute another pair's, and nothing secret crosses the network or etcd.
// A host that is removed (its record gone from etcd) gets no SA from any
// host any more.
//
// # Rotation without loss
//
// A receiver moves to a new epoch by first installing inbound SAs of that
// epoch for every peer, then publishing the epoch. Senders switch to it
// only once they see it published, so no packet is ever sent under an SA
// its receiver lacks. The old inbound SAs stay for a grace period after
// the peer has caught up. Any host may start a rotation (when its timer
// runs out, or when told to); every other host follows the highest epoch
// it sees. Because keys are derived, an SA must never be installed twice:
// its sequence counter would restart and repeat AES-GCM nonces. A host
// therefore never installs an outbound SA for an epoch it may have used
// before (all epochs up to the highest it knew when it started) and
// starts a rotation instead.
//
// # Fail closed
//
// The firewall (an nftables table of vxnet's own, beside Docker's iptables
// rules) holds the set of encrypted VNIs. It marks their outgoing VXLAN
// packets so that the policies apply, drops any that would leave without
// IPsec, and drops incoming ones that did not arrive through an SA. A VNI
// enters the set before its VXLAN device exists and leaves it after the
// device is gone; the table outlives plugin restarts.
package ipsec
