package config

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoad(t *testing.T) {
	s, err := Load("t", []string{"--vxlan-port", "4790"}, env(map[string]string{
		"VXNET_VXLAN_PORT":     "9999",
		"VXNET_ETCD_ENDPOINTS": "http://192.0.2.2:2379, http://192.0.2.3:2379",
		"VXNET_NODE_NAME":      "h1",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if s.VXLANPort != 4790 {
		t.Errorf("port = %d; want the flag's 4790", s.VXLANPort)
	}
	if got := strings.Join(s.EtcdEndpoints, " "); got != "http://192.0.2.2:2379 http://192.0.2.3:2379" {
		t.Errorf("endpoints = %q", got)
	}
	if s.VNIRange.First != 16000000 || s.VNIRange.Last != 16777214 {
		t.Errorf("VNI range = %v; want the default", s.VNIRange)
	}
	if s.Socket != "/run/docker/plugins/vxnet.sock" || s.EtcdPrefix != "/vxnet" || s.LogFormat != "text" {
		t.Errorf("defaults not applied: %+v", s)
	}
	if s.DataAddr != "" {
		t.Errorf("data addr = %q; want empty (worked out at start)", s.DataAddr)
	}
}

func TestLoadRefusesBadValues(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"VXNET_VXLAN_PORT": "abc"}, "VXNET_VXLAN_PORT"},
		{map[string]string{"VXNET_VNI_RANGE": "5-1"}, "FIRST-LAST"},
		{map[string]string{"VXNET_VNI_RANGE": "1-16777216"}, "16777215"},
		{map[string]string{"VXNET_LOG_FORMAT": "xml"}, "text or json"},
		{map[string]string{"VXNET_ETCD_PREFIX": "/"}, "empty"},
		{map[string]string{"VXNET_ETCD_CERT": "c.pem"}, "go together"},
		{map[string]string{"VXNET_ETCD_ENDPOINTS": " , "}, "no endpoint"},
	} {
		_, err := Load("t", nil, env(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%v) = %v; want an error containing %q", tc.env, err, tc.want)
		}
	}
}

// config.json must offer every setting to `docker plugin set`, with the
// same default.
func TestPluginConfigOffersEverySetting(t *testing.T) {
	b, err := os.ReadFile("../config.json")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Env []struct {
			Name     string
			Value    string
			Settable []string
		}
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	offered := map[string]string{}
	for _, e := range cfg.Env {
		if !slices.Contains(e.Settable, "value") {
			t.Errorf("%s is not settable", e.Name)
		}
		offered[e.Name] = e.Value
	}
	for _, st := range table {
		if st.env == "VXNET_SOCKET" {
			continue // fixed by config.json's interface.socket
		}
		v, ok := offered[st.env]
		if !ok {
			t.Errorf("config.json lacks %s", st.env)
			continue
		}
		// Paths on the host's /run are seen under the run mount.
		if onRun := map[string]string{
			"VXNET_NETNS_DIR":     "/host/run/vxnet/netns",
			"VXNET_DOCKER_SOCKET": "/host/run/docker.sock",
			"VXNET_SANDBOX_DIR":   "/host/run/docker/netns",
		}; onRun[st.env] != "" {
			if v != onRun[st.env] {
				t.Errorf("config.json sets %s=%q; want %q, the host's %s seen through the run mount at /host/run", st.env, v, onRun[st.env], st.def)
			}
			continue
		}
		if v != "" && v != st.def {
			t.Errorf("config.json sets %s=%q; the built-in default is %q", st.env, v, st.def)
		}
	}
	if len(offered) != len(table)-1 {
		t.Errorf("config.json offers %d settings; the table has %d besides the socket", len(offered), len(table)-1)
	}
}

func TestREADMEListsEverySetting(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range table {
		if !strings.Contains(string(b), "`"+st.env+"`") {
			t.Errorf("README.md does not document %s (paste `vxnet settings`)", st.env)
		}
	}
}

// Docker makes a plugin's root mount rshared only when the plugin has a
// propagated mount. Without it the bind of the host's /run is a slave, and
// namespaces pinned under it never reach the host: they would die with the
// plugin process, and the data plane with them.
func TestPluginConfigPropagatesPinsToTheHost(t *testing.T) {
	b, err := os.ReadFile("../config.json")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		PropagatedMount string
		Mounts          []struct {
			Source, Destination string
			Options             []string
		}
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.PropagatedMount == "" {
		t.Error("config.json has no propagatedmount: the root mount would not be rshared")
	}
	found := false
	for _, m := range cfg.Mounts {
		if m.Source == "/run" && m.Destination == "/host/run" && slices.Contains(m.Options, "rshared") {
			found = true
		}
	}
	if !found {
		t.Error("config.json does not bind the host's /run rshared at /host/run")
	}
}
