// Package svclb load-balances the virtual IPs (VIPs) of swarm services on
// vxnet networks, without IPVS.
//
// # Why vxnet does it
//
// A swarm service in the default endpoint mode ("vip") gets a VIP on each
// of its networks, and its name resolves to it. Docker balances VIPs with
// IPVS from a load-balancer endpoint it creates on a network only when
// the network's driver is named "overlay" (moby daemon/network.go), so on
// any plugin's network a VIP is an address nothing answers; dockerd logs
// "addLBBackend …: Unable to find load balancing endpoint for network".
//
// # What it does
//
// Docker still does the rest: swarm allocates the VIP, the embedded DNS
// answers the service's name with it, and libnetwork gossips every task's
// endpoint, with its service name and VIP, to each host that has a
// container on the network. That table is what `GET
// /networks/{id}?verbose=true` returns under "Services", on managers and
// workers alike (Docker 20.10, checked in the lab). vxnet reads it from
// the local dockerd (Docker) and, in the namespace of every container
// attached to a vxnet network on this host, keeps one nftables table per
// network (Program):
//
//	ip daddr VIP meta l4proto { tcp, udp } dnat to numgen random mod N map { 0 : TASK0, … }
//
// in a nat output chain. Each new connection (conntrack's, so a UDP flow
// too) picks a task at random; conntrack keeps it on that task for its
// life, whatever later programs say, and un-NATs the replies. The DNAT
// is in the output hook, before the route is looked up again, so the VIP
// needs no address, route or ARP entry of its own; packets go straight
// from the client's namespace to the task over VXLAN, with the client's
// own address as source (Docker's IPVS load balancer SNATs to its own
// endpoint; vxnet has none and needs none).
//
// ICMP to a VIP is not balanced: a ping to a VIP goes unanswered, as with
// Docker's IPVS load balancer.
//
// # Terms
//
//   - sandbox key: Docker's path of a container's network namespace,
//     <exec-root>/netns/ID, given to the driver in Join. The plugin opens it
//     by its base name under its sandbox directory (VXNET_SANDBOX_DIR),
//     where the host's /run/docker/netns appears through the run mount.
//   - attachment: an endpoint of a vxnet network joined to a container on
//     this host; it has the container's namespace, where rules go.
//
// # The loop
//
// Join and Leave tell LB of attachments (Attach, Detach: a map under a
// mutex and a wake-up, never a block). One loop (Run) owns everything
// else: every PollInterval, and at once on a wake-up, it reads each
// attached network's services from dockerd and programs the namespaces
// whose network changed. Dockerd says nothing of tasks on other hosts
// through its events API, hence the poll, and only while containers are
// attached. A task that starts or stops anywhere reaches every client
// within the gossip's delay and one poll.
//
// A task being removed stays in the API's table until its container has
// stopped, but swarm disables it first, 2 s before its stop signal, and
// Docker's own balancer stops sending it connections then. The API does
// not say so; Docker's embedded DNS does: tasks.NAME names only the
// enabled tasks (and a task with a health check only once it is
// healthy). So each poll also asks that DNS, from inside one of the
// network's containers here (enabledTasks), and balances over the tasks
// both name. If the DNS does not answer, every task the API lists gets
// connections, with a log line, until it does.
//
// Without a socket (VXNET_DOCKER_SOCKET empty) LB is off and says so once;
// while dockerd does not answer, the rules in place stay and the log says
// why, once; an answer refused (not the JSON expected, too large, a VIP or
// task outside the network's subnets) leaves the rules in place with a
// log line. A plugin restarted takes back the containers attached before
// from dockerd's container list (restore).
package svclb
