package lab

import (
	"context"
	"time"

	"github.com/vxnet/vxnet/internal/nstest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// AddOutsider plugs a namespace that runs no vxnet into the lab's
// underlay at addr (192.0.2.0/24): a machine on the control network, for
// tests of what such a machine can and cannot do.
func (l *Lab) AddOutsider(name, addr string) nstest.NS {
	t := l.t
	t.Helper()
	ns := nstest.New(t, name)
	l.underlay.Plug(t, ns, "eth0", addr, 0)
	return ns
}

// Put writes key = val to etcd, as a node holding etcd's credentials
// could; lease 0 writes it with none.
func (e *Etcd) Put(t nstest.T, key, val string, lease int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var opts []clientv3.OpOption
	if lease != 0 {
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(lease)))
	}
	if _, err := e.cli.Put(ctx, key, val, opts...); err != nil {
		t.Fatalf("etcd put %s: %v", key, err)
	}
}

// Delete removes key from etcd.
func (e *Etcd) Delete(t nstest.T, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := e.cli.Delete(ctx, key); err != nil {
		t.Fatalf("etcd delete %s: %v", key, err)
	}
}

// Get reads key from etcd, with the lease it is stored under.
func (e *Etcd) Get(t nstest.T, key string) (val string, lease int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := e.cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("etcd get %s: %v (%d keys)", key, err, len(resp.Kvs))
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].Lease
}
