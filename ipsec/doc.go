// Package ipsec encrypts the VXLAN traffic of vxnet's encrypted networks
// between hosts. It holds:
//
//   - node keys, their epochs and the SAs derived from them (keys.go);
//   - the kernel's SAs and policies (xfrm_linux.go, Kernel) and the
//     firewall that keeps plaintext out (firewall_linux.go, Firewall),
//     together a Host;
//   - the key and rotation protocol below (Encryption: encryption.go for
//     its API and loop, rotation.go for its rules), which decides what the
//     Host programs from the key records in etcd (KeyStore, implemented by
//     peerdb.Store).
//
// The driver only tells Encryption when encrypted networks come and go
// (Attach, Restore, Detach) and shows its Status; it keeps no key or SA
// state of its own.
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
// Encryption's rules: the first full key table from etcd moves a host one
// epoch above every epoch anyone has (its own, its peers', those of the
// SAs a previous run left in the kernel); a host follows the highest epoch
// it sees; the epoch is saved in the key file before any SA of it is
// installed, so epochs only grow, also across restarts. Every second
// (tickEvery) it retries what failed; every five (repairTicks) it reads
// the kernel's state back: a lost policy is set again, a lost SA is replaced
// by starting a new epoch, never by installing the same key again.
//
// # Epoch bounds
//
// The kernel keeps an SA's epoch in the low EpochBits (24) of its reqid,
// beside vxnet's tag: that is how a restarted host learns which epochs
// its SAs were of. Epochs therefore run from 1 to MaxEpoch (2^24-1) and
// never wrap: a host at MaxEpoch refuses to rotate with ErrLastEpoch and
// keeps its current keys (at the default 12-hour rotation, 23,000 years).
// A peer's record is followed only if its epoch is not 0, not beyond
// MaxEpoch and at most MaxEpochLead (2^16) above the highest epoch this
// host knows (CheckEpoch); any other record is ignored and logged, and
// the peer's previous record stays, so a broken or hostile record can
// neither use up the epochs nor make a host reuse one.
//
// # A bad key file
//
// A key file (ipsec.key in the state directory) that cannot be used —
// corrupt, not an X25519 key, an epoch beyond MaxEpoch — is never
// replaced silently. The host still starts: NewEncryption returns an
// Encryption that refuses encrypted networks (Check, Attach, Rotate) with
// an error naming the fix (remove the file and restart the plugin), and
// publishes nothing and touches no SA or policy. Plain networks are not
// affected. Kernel IPsec state that cannot be read is handled the same
// way. Encrypted networks that survived a restart keep their VNIs in the
// firewall (Restore), so their traffic stops rather than leave in
// plaintext.
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
