// Package monitoring holds what an operator loads to watch vxnet in
// production, and the tests that keep it true to the code. It has no Go API:
//
//   - vxnet-dashboard.json: a Grafana dashboard (Prometheus data source,
//     chosen by the "datasource" variable; hosts by "instance").
//   - vxnet-alerts.yml: Prometheus alert rules (rule_files), with their
//     assumptions written at its top: the scrape job is named "vxnet", the
//     key rotation period is the default 12h, every host can encrypt.
//   - vxnet-alerts_test.yml: promtool unit tests of the rules.
//
// README.md, section "Monitoring", says what each panel and alert means and
// what to do about it.
//
// # What the tests check
//
// Names. Every metric a dashboard query or an alert names must be one vxnet
// exports. The list comes from the code, not from a copy: the test builds a
// real driver.Driver (no kernel, etcd or gossip behind it: Describe and
// Collect read only its memory) and asks its Collector to describe itself,
// with the Go and process collectors cmd/vxnet registers beside it. Describe
// names every metric, also those with no sample yet (per-network gauges,
// IPsec, serf, refusals by reason); a scrape of a running plugin would not,
// as Prometheus' text format lists only families with samples, and the IPsec
// ones need a kernel with ESP. A histogram's _bucket, _sum and _count series
// are allowed where Collect shows the family is a histogram. Alert rules may
// also name up, the series Prometheus itself records for each target.
// Every vxnet_ metric has a panel.
//
// Validity. promtool (Debian's prometheus package) checks the rules (check
// rules), runs their unit tests (test rules), and parses every dashboard
// query, given to it as a recording rule with Grafana's variables filled
// in. Debian packages no Grafana dashboard linter, so the test checks the
// dashboard's structure itself: unique panel IDs and titles, a grid within
// 24 columns without overlaps, every panel on the dashboard's data source
// variable with at least one query, every variable a query uses defined.
// Without promtool the test skips, or fails under VXNET_TEST_STRICT=1 (CI).
package monitoring
