package driver

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the driver's Prometheus metrics; Collector exposes them.
type metrics struct {
	programErrors prometheus.Counter
	eventLag      prometheus.Histogram
	peerEvents    *prometheus.CounterVec
}

func newMetrics() metrics {
	return metrics{
		programErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vxnet_programming_errors_total",
			Help: "Batches of peer entries (neighbour and FDB) the kernel refused in part or whole; the log names each.",
		}),
		eventLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vxnet_event_lag_seconds",
			Help:    "From an endpoint record's write on its node to its programming here (clocks of both nodes).",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		peerEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vxnet_peer_events_total",
			Help: "Endpoint changes this node received, by source: etcd (watch events), etcd-list (records of a network listed whole), gossip-direct (sent to this node), gossip-broadcast (sent to every node). They follow the churn of the networks used here, not the cluster's.",
		}, []string{"source"}),
	}
}

var (
	descProgrammed = prometheus.NewDesc("vxnet_peers_programmed", "Remote peers this host's kernel holds entries for, per attached network, as programmed (vxnet check compares them with the kernel).", []string{"network"}, nil)
	descLocal      = prometheus.NewDesc("vxnet_local_endpoints", "Endpoints created on this node.", nil, nil)
	descCluster    = prometheus.NewDesc("vxnet_cluster_endpoints", "Endpoint records this node holds: those of the networks used here.", nil, nil)
	descWatched    = prometheus.NewDesc("vxnet_watched_networks", "Cluster networks whose records this node holds and watches in etcd: those with an endpoint here.", nil, nil)
	descEtcdUp     = prometheus.NewDesc("vxnet_etcd_up", "1 if etcd answered this node in the last 10 s (lease keepalive, list or watch).", nil, nil)
	descSynced     = prometheus.NewDesc("vxnet_peer_table_loaded", "1 while this node holds the node table and the records of every network used here, from etcd.", nil, nil)
	descMembers    = prometheus.NewDesc("vxnet_serf_members", "serf members this node knows, by state (alive, leaving, left, failed).", []string{"status"}, nil)
	descPending    = prometheus.NewDesc("vxnet_pending_etcd_writes", "Own endpoint changes gossiped but not yet written to etcd.", nil, nil)
	descEpoch      = prometheus.NewDesc("vxnet_ipsec_epoch", "The key epoch this node holds inbound SAs for.", nil, nil)
	descSAs        = prometheus.NewDesc("vxnet_ipsec_sas", "IPsec SAs this node programmed, by direction (in, out).", []string{"direction"}, nil)
	descConflicts  = prometheus.NewDesc("vxnet_peer_conflicts", "Records of attached networks left unprogrammed because an older claim or this host holds their IP or MAC (vxnet check lists them).", nil, nil)
	descRefused    = prometheus.NewDesc("vxnet_peer_records_refused_total", "Peer records and gossip messages refused, by reason (the log names each).", []string{"reason"}, nil)
)

// Collector returns the driver's metrics for a Prometheus registry.
func (d *Driver) Collector() prometheus.Collector { return (*collector)(d) }

type collector Driver

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, desc := range []*prometheus.Desc{descProgrammed, descLocal, descCluster, descWatched, descEtcdUp, descSynced, descMembers, descPending, descEpoch, descSAs, descConflicts, descRefused} {
		ch <- desc
	}
	c.metrics.programErrors.Describe(ch)
	c.metrics.eventLag.Describe(ch)
	c.metrics.peerEvents.Describe(ch)
}

// Collect reports what the driver keeps as events happen: a scrape reads
// no etcd and no kernel.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	d := (*Driver)(c)
	d.mu.Lock()
	programmed := map[string]int{}
	for _, n := range d.networks {
		if n.active {
			programmed[n.nid] = len(d.table.Desired(n.cid))
		}
	}
	conflicts, refused := len(d.table.Conflicts()), d.table.Refused()
	d.mu.Unlock()
	for nid, v := range programmed {
		ch <- prometheus.MustNewConstMetric(descProgrammed, prometheus.GaugeValue, float64(v), nid)
	}
	ch <- prometheus.MustNewConstMetric(descConflicts, prometheus.GaugeValue, float64(conflicts))
	for reason, n := range refused {
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(n), reason)
	}
	st := d.localStatus()
	ch <- prometheus.MustNewConstMetric(descLocal, prometheus.GaugeValue, float64(st.Endpoints))
	ch <- prometheus.MustNewConstMetric(descCluster, prometheus.GaugeValue, float64(st.Peers))
	ch <- prometheus.MustNewConstMetric(descWatched, prometheus.GaugeValue, float64(st.Watched))
	ch <- prometheus.MustNewConstMetric(descEtcdUp, prometheus.GaugeValue, b2f(d.store.Healthy()))
	ch <- prometheus.MustNewConstMetric(descSynced, prometheus.GaugeValue, b2f(st.Synced))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(st.Pending))
	if e := st.Encryption; e != nil {
		ch <- prometheus.MustNewConstMetric(descEpoch, prometheus.GaugeValue, float64(e.Epoch))
		ch <- prometheus.MustNewConstMetric(descSAs, prometheus.GaugeValue, float64(e.Inbound), "in")
		ch <- prometheus.MustNewConstMetric(descSAs, prometheus.GaugeValue, float64(e.Outbound), "out")
	}
	if st.Members != nil {
		byStatus := map[string]float64{"alive": 0, "failed": 0}
		for _, m := range st.Members {
			byStatus[m.Status]++
		}
		for status, v := range byStatus {
			ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, v, status)
		}
	}
	c.metrics.programErrors.Collect(ch)
	c.metrics.eventLag.Collect(ch)
	c.metrics.peerEvents.Collect(ch)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// observeLag records how long ago a record was written.
func (d *Driver) observeLag(written time.Time) {
	if !written.IsZero() {
		d.metrics.eventLag.Observe(time.Since(written).Seconds())
	}
}
