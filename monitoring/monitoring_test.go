package monitoring

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/driver"
	"github.com/vxnet/vxnet/internal/nstest"
	"go.yaml.in/yaml/v3"
)

const (
	dashboardFile = "vxnet-dashboard.json"
	rulesFile     = "vxnet-alerts.yml"
	rulesTestFile = "vxnet-alerts_test.yml"
	readmeFile    = "../README.md"
)

// promSeries is the series Prometheus records itself for each target; alert
// rules may name it (VxnetDown), the dashboard does not.
const promSeries = "up"

// healthyStore is the one PeerStore method Collect calls; Describe and
// Collect call nothing else, so the rest stays nil.
type healthyStore struct{ driver.PeerStore }

func (healthyStore) Healthy() bool { return true }

// exported lists the metric series vxnet serves: the driver's collector and
// the Go and process collectors, as cmd/vxnet registers them. A histogram
// or summary adds its _bucket, _sum and _count series.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	d := driver.New(driver.Config{Node: "monitoring-test"}, nil, healthyStore{}, nil, logrus.NewEntry(log))
	cs := []prometheus.Collector{d.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})}

	names := map[string]bool{}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for _, c := range cs {
		ch := make(chan *prometheus.Desc)
		go func() { c.Describe(ch); close(ch) }()
		for desc := range ch {
			m := fqName.FindStringSubmatch(desc.String())
			if m == nil {
				t.Fatalf("no name in %s", desc)
			}
			names[m[1]] = true
		}
	}
	// The pedantic registry also checks that what Collect sends matches
	// what Describe said.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(cs...)
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering the metrics: %v", err)
	}
	for _, f := range families {
		if !names[f.GetName()] {
			t.Errorf("metric %s is collected but not described", f.GetName())
		}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			names[f.GetName()+"_bucket"] = true
			fallthrough
		case dto.MetricType_SUMMARY:
			names[f.GetName()+"_sum"] = true
			names[f.GetName()+"_count"] = true
		}
	}
	if !names["vxnet_etcd_up"] || !names["vxnet_event_lag_seconds_bucket"] || !names["process_cpu_seconds_total"] {
		t.Fatalf("the exported names lack what every plugin serves: %v", sorted(names))
	}
	return names
}

var (
	stringLit = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	matchers  = regexp.MustCompile(`\{[^}]*\}`)
	ranges    = regexp.MustCompile(`\[[^\]]*\]`)
	grouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	variable  = regexp.MustCompile(`\$\{?\w+\}?`)
	ident     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	// keywords are PromQL's words that are neither functions called with
	// "(" nor metric names.
	keywords = map[string]bool{
		"and": true, "or": true, "unless": true, "offset": true, "bool": true, "atan2": true,
		"inf": true, "nan": true, "start": true, "end": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	}
)

// metricNames returns the metric names a PromQL expression selects: what is
// left once strings, label matchers, ranges, grouping labels and Grafana's
// variables are gone, less keywords, numbers and function names (followed
// by "(").
func metricNames(expr string) []string {
	s := stringLit.ReplaceAllString(expr, `""`)
	s = matchers.ReplaceAllString(s, " ")
	s = ranges.ReplaceAllString(s, " ")
	s = grouping.ReplaceAllString(s, " ")
	s = variable.ReplaceAllString(s, " ")
	var out []string
	for _, loc := range ident.FindAllStringIndex(s, -1) {
		if loc[0] > 0 && strings.ContainsAny(s[loc[0]-1:loc[0]], "0123456789.") {
			continue // a number's exponent or unit (1e3, 25h)
		}
		word := s[loc[0]:loc[1]]
		if keywords[strings.ToLower(word)] || strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " \t\n"), "(") {
			continue
		}
		if !slices.Contains(out, word) {
			out = append(out, word)
		}
	}
	return out
}

// checkNames reports each metric expr names that is neither exported nor
// in extra, and returns the names.
func checkNames(t *testing.T, where, expr string, exported, extra map[string]bool) []string {
	t.Helper()
	if strings.Contains(expr, "__name__") {
		t.Errorf("%s: %q selects by __name__, which this test cannot follow; name the metric", where, expr)
	}
	names := metricNames(expr)
	if len(names) == 0 {
		t.Errorf("%s: %q names no metric", where, expr)
	}
	for _, n := range names {
		if !exported[n] && !extra[n] {
			t.Errorf("%s: %q names %s, which vxnet does not export", where, expr, n)
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{`vxnet_etcd_up == 0`, "vxnet_etcd_up"},
		{`up{job="vxnet"} == 0`, "up"},
		{`increase(vxnet_programming_errors_total[10m]) > 0`, "vxnet_programming_errors_total"},
		{`histogram_quantile(0.99, sum by (instance, le) (rate(vxnet_event_lag_seconds_bucket{instance=~"$instance"}[$__rate_interval]))) > 5`, "vxnet_event_lag_seconds_bucket"},
		{"vxnet_ipsec_sas{direction=\"out\"}\n  < on (instance, job) (vxnet_serf_members{status=\"alive\"} - 1)\nand on (instance, job) vxnet_ipsec_sas{direction=\"in\"} > 0", "vxnet_ipsec_sas vxnet_serf_members"},
		{`changes(vxnet_ipsec_epoch[25h]) == 0 and vxnet_ipsec_epoch offset 25h`, "vxnet_ipsec_epoch"},
		{`sum without (reason) (vxnet_peer_records_refused_total) / 1e3`, "vxnet_peer_records_refused_total"},
		{`{__name__="vxnet_x"}`, ""},
	} {
		if got := strings.Join(metricNames(tc.expr), " "); got != tc.want {
			t.Errorf("metricNames(%q) = %q; want %q", tc.expr, got, tc.want)
		}
	}
}

// dashboard is the part of Grafana's dashboard model the tests read.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID          int                      `json:"id"`
	Type        string                   `json:"type"`
	Title       string                   `json:"title"`
	Description string                   `json:"description"`
	Datasource  *datasource              `json:"datasource"`
	GridPos     struct{ H, W, X, Y int } `json:"gridPos"`
	Targets     []struct {
		Expr       string      `json:"expr"`
		RefID      string      `json:"refId"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

// panelTypes are the panel types the dashboard may use (Grafana's built-in
// ones, so no plugin needs installing).
var panelTypes = map[string]bool{"row": true, "stat": true, "timeseries": true, "gauge": true, "table": true, "bargauge": true}

// grafanaVars are Grafana's built-in variables and what promtool gets
// instead of each.
var grafanaVars = map[string]string{"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// allPanels flattens rows, collapsed or not.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// queries returns the dashboard's PromQL queries, keyed by a name for
// errors, with variables as Grafana writes them.
func (d dashboard) queries() map[string]string {
	out := map[string]string{}
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			out[fmt.Sprintf("panel %d %q query %s", p.ID, p.Title, tg.RefID)] = tg.Expr
		}
	}
	return out
}

func (d dashboard) variables() map[string]bool {
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	return vars
}

// TestDashboardStructure checks what Grafana would trip on or show wrong,
// since Debian packages no dashboard linter.
func TestDashboardStructure(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" || d.SchemaVersion == 0 {
		t.Errorf("dashboard uid %q, title %q, schemaVersion %d: want all set", d.UID, d.Title, d.SchemaVersion)
	}
	vars := d.variables()
	var dsVar string
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && string(v.Query) == `"prometheus"` {
			dsVar = "${" + v.Name + "}"
		}
	}
	if dsVar == "" {
		t.Fatal("no Prometheus data source variable in templating")
	}
	ids, titles := map[int]bool{}, map[string]bool{}
	type rect struct {
		id             int
		x0, y0, x1, y1 int
	}
	var rects []rect
	ps := allPanels(d.Panels)
	if len(ps) == 0 {
		t.Fatal("no panels")
	}
	for _, p := range ps {
		name := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if p.ID <= 0 || ids[p.ID] {
			t.Errorf("%s: id missing or not unique", name)
		}
		ids[p.ID] = true
		if !panelTypes[p.Type] {
			t.Errorf("%s: type %q is none of Grafana's built-in %v", name, p.Type, sorted(panelTypes))
		}
		g := p.GridPos
		if g.W < 1 || g.H < 1 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("%s: gridPos %+v outside Grafana's 24 columns", name, g)
		}
		for _, r := range rects {
			if g.X < r.x1 && r.x0 < g.X+g.W && g.Y < r.y1 && r.y0 < g.Y+g.H {
				t.Errorf("%s overlaps panel %d", name, r.id)
			}
		}
		rects = append(rects, rect{p.ID, g.X, g.Y, g.X + g.W, g.Y + g.H})
		if p.Title == "" || titles[p.Title] {
			t.Errorf("%s: title missing or not unique", name)
		}
		titles[p.Title] = true
		if p.Type == "row" {
			continue
		}
		if p.Description == "" {
			t.Errorf("%s: no description (shown as the panel's tooltip)", name)
		}
		if p.Datasource == nil || p.Datasource.UID != dsVar {
			t.Errorf("%s: datasource %+v; want uid %s", name, p.Datasource, dsVar)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no queries", name)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("%s: refId %q missing or not unique", name, tg.RefID)
			}
			refs[tg.RefID] = true
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s query %s: no expr", name, tg.RefID)
			}
			if tg.Datasource != nil && tg.Datasource.UID != dsVar {
				t.Errorf("%s query %s: datasource %+v; want uid %s", name, tg.RefID, tg.Datasource, dsVar)
			}
			for _, m := range variable.FindAllString(tg.Expr, -1) {
				v := strings.Trim(m, "${}")
				if _, builtin := grafanaVars[v]; !builtin && !vars[v] {
					t.Errorf("%s query %s: variable %s is not defined", name, tg.RefID, m)
				}
			}
		}
	}
}

// labelValues is the metric a Grafana variable's label_values(METRIC, LABEL)
// query names.
var labelValues = regexp.MustCompile(`^label_values\((\w+),\s*\w+\)$`)

// TestDashboardNamesExportedMetrics: every metric a query names is one
// vxnet serves, and every vxnet_ metric has a panel.
func TestDashboardNamesExportedMetrics(t *testing.T) {
	have := exported(t)
	d := loadDashboard(t)
	used := map[string]bool{}
	check := func(where, expr string) {
		for _, n := range checkNames(t, where, expr, have, nil) {
			used[n] = true
		}
	}
	for where, expr := range d.queries() {
		check(where, expr)
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct{ Query string }
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("variable %s: query: %v", v.Name, err)
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q; want label_values(METRIC, LABEL)", v.Name, q.Query)
			continue
		}
		check("variable "+v.Name, m[1])
	}
	for n := range have {
		if strings.HasPrefix(n, "vxnet_") && !used[n] && !used[n+"_bucket"] && !used[n+"_count"] &&
			!strings.HasSuffix(n, "_bucket") && !strings.HasSuffix(n, "_sum") && !strings.HasSuffix(n, "_count") {
			t.Errorf("vxnet exports %s but no dashboard panel shows it", n)
		}
	}
}

// rules is the part of a Prometheus rule file the tests read.
type rules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// ruleTests is the part of a promtool test file the tests read.
type ruleTests struct {
	Tests []struct {
		AlertRuleTest []struct {
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

func loadYAML(t *testing.T, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// TestAlertRules: every alert names only metrics vxnet exports (or up),
// has a severity, a summary and a description, and a unit test in which it
// fires.
func TestAlertRules(t *testing.T) {
	have := exported(t)
	var rs rules
	loadYAML(t, rulesFile, &rs)
	var tests ruleTests
	b, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &tests); err != nil {
		t.Fatalf("%s: %v", rulesTestFile, err)
	}
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			fires[a.Alertname] = fires[a.Alertname] || len(a.ExpAlerts) > 0
		}
	}
	n := 0
	for _, g := range rs.Groups {
		for _, r := range g.Rules {
			n++
			if r.Alert == "" {
				t.Errorf("group %s: rule %q is no alert", g.Name, r.Expr)
				continue
			}
			checkNames(t, "alert "+r.Alert, r.Expr, have, map[string]bool{promSeries: true})
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("alert %s: severity %q; want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: want a summary and a description", r.Alert)
			}
			if !fires[r.Alert] {
				t.Errorf("alert %s: no test in %s where it fires", r.Alert, rulesTestFile)
			}
		}
	}
	if n == 0 {
		t.Fatalf("%s holds no rules", rulesFile)
	}
}

// promtool returns the path of Prometheus' promtool, or skips t.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		nstest.Unavailable(t, "needs promtool (Debian's prometheus package; make setup)")
	}
	return p
}

func runPromtool(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(promtool(t), args...).CombinedOutput()
	if err != nil {
		t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestPromtoolCheckRules(t *testing.T) {
	runPromtool(t, "check", "rules", rulesFile)
}

func TestPromtoolTestRules(t *testing.T) {
	runPromtool(t, "test", "rules", rulesTestFile)
}

// TestPromtoolDashboardQueries has promtool parse every dashboard query, as
// a recording rule with Grafana's variables filled in.
func TestPromtoolDashboardQueries(t *testing.T) {
	bin := promtool(t)
	d := loadDashboard(t)
	vars := d.variables()
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var recs []rule
	where := map[string]string{}
	qs := d.queries()
	keys := sorted(qs)
	for i, k := range keys {
		expr := variable.ReplaceAllStringFunc(qs[k], func(m string) string {
			v := strings.Trim(m, "${}")
			if s, ok := grafanaVars[v]; ok {
				return s
			}
			if vars[v] {
				return ".*" // every variable of ours is a regex of label values
			}
			return m // left for promtool to refuse (and the structure test names it)
		})
		name := fmt.Sprintf("dashboard:query_%d", i)
		where[name] = k
		recs = append(recs, rule{Record: name, Expr: expr})
	}
	file := map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": recs}}}
	b, err := yaml.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Errorf("promtool check rules on the dashboard's queries: %v\n%s\n(query_N is, in order: %v)", err, out, keys)
	}
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(recs)); err == nil && !strings.Contains(string(out), want) {
		t.Errorf("promtool check rules on the dashboard's queries: %s; want %q", out, want)
	}
}

// TestReadmeExplainsEveryPanelAndAlert: README's Monitoring section names
// each panel (by title) and each alert.
func TestReadmeExplainsEveryPanelAndAlert(t *testing.T) {
	b, err := os.ReadFile(readmeFile)
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## Monitoring\n")
	if !ok {
		t.Fatalf("%s has no section ## Monitoring", readmeFile)
	}
	if i := strings.Index(sec, "\n## "); i >= 0 {
		sec = sec[:i]
	}
	for _, p := range allPanels(loadDashboard(t).Panels) {
		if p.Type != "row" && !strings.Contains(sec, "**"+p.Title+"**") {
			t.Errorf("README's Monitoring section does not explain panel **%s**", p.Title)
		}
	}
	var rs rules
	loadYAML(t, rulesFile, &rs)
	for _, g := range rs.Groups {
		for _, r := range g.Rules {
			if !strings.Contains(sec, "`"+r.Alert+"`") {
				t.Errorf("README's Monitoring section does not explain alert `%s`", r.Alert)
			}
		}
	}
}

func sorted[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
