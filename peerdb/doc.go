// Package peerdb holds the cluster-wide state of vxnet in etcd: networks,
// their VNIs, the endpoints joined on every node, and the nodes.
//
// # Keys
//
// Under the prefix (VXNET_ETCD_PREFIX, default /vxnet):
//
//	networks/<nid>        Network: subnets, VNIs (one per subnet), options
//	vnis/<vni, 8 digits>  the nid holding the VNI: the allocation claim
//	endpoints/<nid>/<eid> Endpoint: IP, MAC, VTEP and node of a joined endpoint
//	nodes/<name>          Node: data and control addresses of a plugin
//
// # Allocation
//
// A network and all its VNI claims are written in one transaction that
// succeeds only if none of those keys exists yet (CreateRevision == 0), so
// two managers creating networks at once can never both get a VNI: the
// loser re-reads the free VNIs and tries again. Freeing is one transaction
// too, and releases only claims whose value is still the network's ID.
//
// # Ordering
//
// An endpoint record carries the etcd revision that wrote it. The table is
// read with a list, then a watch from the list's revision + 1; a failed or
// compacted watch lists again and sends the whole table (a reset), so the
// receiver can drop whatever the new table lacks. etcd delivers the events
// of one key in revision order, so a record is never overwritten by an
// older one from this source.
//
// # Availability
//
// Open never blocks: the client connects in the background and every call
// waits for it only as long as its context allows, then fails with an error
// wrapping ErrUnavailable that names the settings to check.
package peerdb
