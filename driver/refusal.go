package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Refusals in swarm. Docker 20.10 to 28 surface a driver's refusal of a
// swarm network late or not at all:
//
//   - AllocateNetwork runs on a manager after `docker network create` has
//     returned. An error leaves the network unallocated: `docker run
//     --network` waits 20 s for an attachment that never comes ("attaching
//     to network failed ... check manager logs"), a service's task stays
//     in New with no error, and the reason is only in the manager's log.
//   - CreateNetwork on a host runs in the preparation of the attachment
//     task; an error there fails that task, and `docker run` again waits
//     20 s.
//   - CreateEndpoint and Join run inside `docker run` and a task's start,
//     so an error there reaches the user at once. But an error from
//     CreateEndpoint comes before Docker made the container's sandbox,
//     and Docker then never releases the swarm attachment: the network
//     cannot be removed while it lasts. After a refused Join Docker
//     deletes the sandbox and releases the attachment.
//
// So in swarm vxnet refuses at Join. A manager that refuses a network's
// options (a bad option, a VNI in use) allocates nothing and returns the
// reason under OptRefused instead of an error; every host's CreateNetwork
// then accepts the network, records nothing but the reason, and each Join
// says it. What depends on a host (its kernel can do ESP) is decided by
// that host's CreateNetwork in the same way, so an encrypted network runs
// on the hosts that can carry it and is refused, with the fix, on those
// that cannot. Nothing of a refused network reaches etcd or a kernel.
// Without swarm, CreateNetwork runs inside `docker network create` and
// refuses there.

// OptRefused carries, from the manager's AllocateNetwork to every host's
// CreateNetwork, why vxnet refused a swarm network. It is vxnet's own:
// a user who gives it is refused as for any unknown option.
const OptRefused = "vxnet.refused"

// AllocateNetwork is the swarm manager's half of creating a network:
// validate, then take one VNI per subnet in etcd. The returned options (the
// user's, with the VNIs under OptVNIs) reach every node's CreateNetwork. A
// network vxnet refuses gets no VNI and only OptRefused, with the reason;
// an error is left for what may pass when tried again (etcd away), which
// swarm does.
func (d *Driver) AllocateNetwork(ctx context.Context, req NetworkRequest) (map[string]string, error) {
	out, err := d.allocateNetwork(ctx, req)
	if !errors.Is(err, ErrInvalid) {
		return out, err
	}
	reason := strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": ")
	d.log.WithField("nid", req.NID).WithError(err).Warn("network refused: every container or task that joins it fails with this reason")
	return map[string]string{OptRefused: reason}, nil
}

// refusal is why this host refuses network nid, or nil.
func (d *Driver) refusal(nid string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.refused[nid]
}

// refuse records that this host will not carry swarm network nid, and
// why; Join returns why.
func (d *Driver) refuse(nid string, why error) {
	d.mu.Lock()
	d.refused[nid] = why
	d.mu.Unlock()
	d.log.WithField("nid", nid).WithError(why).Warn("network refused on this host: its containers and tasks here fail to join it with this reason")
}

// refusedAtCreation is a host's refusal of a network its manager refused
// (OptRefused holds the reason).
func refusedAtCreation(nid, reason string) error {
	return invalid("network %s was refused when it was created: %s; remove it (docker network rm) and create it again", nid, reason)
}

// refusedHere is a host's refusal of a network it cannot carry: other
// hosts decide for themselves.
func refusedHere(nid string, err error) error {
	return fmt.Errorf("this host refuses network %s: %w", nid, err)
}

// forgetRefusal drops what refuse recorded of nid.
func (d *Driver) forgetRefusal(nid string) {
	d.mu.Lock()
	delete(d.refused, nid)
	d.mu.Unlock()
}
