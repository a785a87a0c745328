// Package peerdb holds the cluster-wide state of vxnet in etcd: networks,
// their VNIs, the endpoints joined on every node, and the nodes.
//
// # Keys
//
// Under the prefix (VXNET_ETCD_PREFIX, default /vxnet):
//
//	networks/<nid>        Network: subnets, VNIs (one per subnet), options, users
//	vnis/<vni, 8 digits>  the nid holding the VNI: the allocation claim
//	endpoints/<nid>/<eid> Endpoint: IP, MAC, VTEP, node, version (leased)
//	nodes/<name>          Node: data and control addresses, gossip public key (leased)
//	gossip/keyring        the cluster's serf keys, base64, the one in use first
//	ipam/pools/<pool>     Pool: an IPAM pool, its --ip-range and its users
//	ipam/addrs/<pool>/<ip> Claim: who holds an address (containers' leased)
//
// A standalone network's nid is "name.NAME". Leased keys live under their
// node's etcd lease and vanish when the node stops renewing it (lease.go).
//
// # Allocation
//
// A network and all its VNI claims are written in one transaction that
// succeeds only if none of those keys exists yet (CreateRevision == 0), so
// two managers creating networks at once can never both get a VNI: the
// loser re-reads the free VNIs and tries again. Freeing is one transaction
// too, and releases only claims whose value is still the network's ID.
//
// # Two sources: etcd and serf
//
// etcd is the durable truth. A node holds the records of the networks it
// uses only (interest follows attachment): each is read with a list of its
// prefix endpoints/<nid>/, then a watch from the list's revision + 1; a
// failed or compacted watch lists again and sends all the network's
// records (a reset), so the receiver can drop whatever the new list lacks.
// Gossip (serf's members and keys) carries the same changes in
// milliseconds and needs no etcd: a node sends each change of its own
// endpoints first, directly, to the nodes with records in the network
// (direct.go), then writes it to etcd, and queues the write if etcd does
// not answer. A node that could not list a network yet (etcd away) sends
// to every member instead, and the members using the network answer with
// their own records of it. Node records are watched whole (they are few
// and small); endpoint records are checked against them.
//
// # Who may say what
//
// A host speaks only for itself:
//
//   - serf runs with the cluster's gossip keys (kept at gossip/keyring in
//     etcd, made by the first node that needs them and followed as they
//     rotate, or VXNET_GOSSIP_KEY): a host without them can neither join
//     nor be heard;
//   - every announcement is signed with its node's Ed25519 key, whose
//     public half is in the node's record; it may put or delete only that
//     node's own records;
//   - an etcd record's identity is its key (endpoints/<nid>/<eid>), never
//     what its body says; its owner is the node named in it, which must
//     have a node record, hold the record's lease, own the data address
//     the record names as VTEP (the first node to claim an address holds
//     it) and be another node than this one;
//   - VTEPs are unicast and routable, MACs unicast and non-zero, and an IP
//     is a host address of a subnet of its network; a remote record never
//     takes a gateway or an address or MAC of this host's own endpoints.
//
// A record that breaks a rule is held but never programmed, logged once
// with its reason and counted (vxnet_peer_records_refused_total).
//
// # Merge rule
//
// Table applies it; nothing else does. For each endpoint key:
//
//   - etcd's record is what the last etcd event (in revision order) or
//     list of its network said; a record whose version is more than
//     MaxVersionAhead past this node's clock counts as absent, so no
//     version can win forever;
//   - a gossiped change (put or delete) is held beside it, provisionally,
//     if its version is larger than etcd's record's, than any change heard
//     before, and than the version of a deletion etcd made (remembered for
//     TombLife, and kept while the network is not watched, so a late put
//     cannot bring a record back); a change whose version is more than
//     TombLife behind this node's clock is refused (a replay);
//   - the record in force is the provisional change while its version is
//     larger than etcd's, else etcd's record. A provisional change goes
//     once etcd holds its version or newer, and once etcd has answered for
//     GossipGrace without confirming it: the owner had that long to write
//     it. So once etcd is reachable, every node ends with what etcd holds,
//     whatever order events came in (TestTableConverges).
//
// Two records in force that claim one IP or one MAC of a network are
// settled the same way on every node: the key etcd created first keeps
// it (a record etcd has not confirmed comes after every one it has, then
// by key); the other is not programmed, and vxnet check and the metric
// vxnet_peer_conflicts report it. The kernel of each attached network
// holds exactly the winners (Table.Desired); Changes say what to remove
// and add as they change.
//
// # Availability
//
// Open never blocks: the client connects in the background and every call
// waits for it only as long as its context allows, then fails with an error
// wrapping ErrUnavailable that names the settings to check.
package peerdb
