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
//	nodes/<name>          Node: data and control addresses of a plugin (leased)
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
// etcd is the durable truth: the table is read with a list, then a watch
// from the list's revision + 1; a failed or compacted watch lists again
// and sends the whole table (a reset), so the receiver can drop whatever
// the new table lacks. serf (Gossip) carries the same changes to every
// node in milliseconds and needs no etcd: a node announces each change of
// its own endpoints by gossip first, then writes it to etcd, and queues the
// write if etcd does not answer.
//
// # Merge rule
//
// Only an endpoint's owner changes its record, and each change carries a
// Version larger than the owner's previous one (the owner's clock in
// nanoseconds, or one more than its last version, whichever is larger).
// A receiver, whichever source a change comes from:
//
//   - takes a put only if its version is larger than the version it holds
//     for that endpoint, and larger than any deletion it remembers;
//   - takes a gossiped delete only if its version is at least the held
//     one, and remembers it (a tombstone, kept 10 minutes) so a late,
//     older put cannot resurrect the endpoint;
//   - takes an etcd delete, or a full table that lacks the endpoint,
//     unless the record it holds came by gossip in the last minute with a
//     version etcd never had: then the owner's write is still on its way
//     (etcd was unreachable), and etcd's view is the older one.
//
// Within etcd alone, events of one key arrive in revision order, and a
// record also carries the revision that wrote it for equal versions.
//
// # Availability
//
// Open never blocks: the client connects in the background and every call
// waits for it only as long as its context allows, then fails with an error
// wrapping ErrUnavailable that names the settings to check.
package peerdb
