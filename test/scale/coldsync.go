package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/vxnet/vxnet/peerdb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// coldList is what a new host does first in the scoped design, without
// the kernel: on a new connection, list each of its networks' records
// (concurrently, as the plugin starts one watch per network) and decode
// them. It returns the time taken and the records.
func coldList(ctx context.Context, newClient func() *clientv3.Client, nids []string) (time.Duration, int, error) {
	begin := time.Now()
	cli := newClient()
	defer cli.Close()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		n    int
		errs []error
	)
	for _, nid := range nids {
		wg.Go(func() {
			resp, err := cli.Get(ctx, networkPrefix(nid), clientv3.WithPrefix())
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("list %s: %w", nid, err))
				mu.Unlock()
				return
			}
			recs := make([]peerdb.Endpoint, 0, len(resp.Kvs))
			for _, kv := range resp.Kvs {
				var e peerdb.Endpoint
				if err := peerdb.UnmarshalVersioned(kv.Value, &e); err == nil {
					recs = append(recs, e)
				}
			}
			mu.Lock()
			n += len(recs)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return 0, 0, errs[0]
	}
	return time.Since(begin), n, nil
}

// hostNIDs are the network IDs host h uses, largest network first.
func (c *cluster) hostNIDs(h int) []string {
	nets := slices.Clone(c.hosts[h].nets)
	slices.SortStableFunc(nets, func(a, b int32) int { return cmp.Compare(c.nets[b].size, c.nets[a].size) })
	out := make([]string, len(nets))
	for i, n := range nets {
		out[i] = c.nets[n].nid
	}
	return out
}
