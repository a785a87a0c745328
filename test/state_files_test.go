package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/ipsec"
	"github.com/vxnet/vxnet/plugin"
	"github.com/vxnet/vxnet/test/lab"
)

// A plugin restarted on a damaged state directory — state.json cut short
// (a power cut before writes were synced), one bad entry in it, a garbage
// ipsec.key — keeps the containers it had: their namespace and interface
// stay, traffic across hosts flows, the log says what was recovered or
// skipped, and a bad key refuses encrypted networks only, naming the fix.
func TestStateFiles(t *testing.T) {
	l := newLab(t, 2)
	h1 := l.Hosts[0]
	nid, cs := networkOnEachHost(t, l, "state")
	c1, c2 := cs[0], cs[1]
	stateDir := h1.StateDir()
	stateFile := filepath.Join(stateDir, "state.json")
	next := 10 // last byte of the next container's address

	// restart stops h1's plugin, lets damage spoil its state directory,
	// starts it again and returns what it logged meanwhile, once it serves.
	restart := func(t *testing.T, damage func()) string {
		t.Helper()
		h1.Stop()
		before, err := os.Stat(h1.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		damage()
		h1.Start()
		eventually(t, "h1 serves after its restart", func() error {
			return h1.Call(plugin.StatusPath, nil, nil)
		})
		b, _ := os.ReadFile(h1.LogPath)
		return string(b[before.Size():])
	}
	// alive checks that the network still works on h1 after a restart:
	// c1's namespace and interface, traffic both ways, and a new
	// container on h1 (so the plugin knows the network again).
	alive := func(t *testing.T, log string) {
		t.Helper()
		if _, err := os.Stat(h1.NetNSPath(nid)); err != nil {
			t.Errorf("the network's namespace on h1 is gone: %v\nlog:\n%s", err, log)
		}
		if out, err := c1.NS.Exec("ip", "link", "show", "eth0"); err != nil {
			t.Errorf("c1's interface is gone: %v %s", err, out)
		}
		if strings.Contains(log, "removing a namespace") || strings.Contains(log, "removing the namespace") {
			t.Errorf("h1 removed a namespace on its restart:\n%s", log)
		}
		pingAll(t, []*lab.Container{c1, c2})
		next++
		c, err := h1.Run(nid, fmt.Sprintf("198.18.10.%d/24", next))
		if err != nil {
			t.Fatalf("a new container on h1 after the restart: %v\nlog:\n%s", err, log)
		}
		pingAll(t, []*lab.Container{c, c2})
		if err := c.Remove(); err != nil {
			t.Error(err)
		}
		if b, err := os.ReadFile(stateFile); err != nil || !json.Valid(b) {
			t.Errorf("state.json after the restart: %v; want it whole again", err)
		}
	}
	wantLog := func(t *testing.T, log string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(log, w) {
				t.Errorf("h1's log lacks %q:\n%s", w, log)
			}
		}
	}

	t.Run("truncated state.json", func(t *testing.T) {
		log := restart(t, func() {
			b, err := os.ReadFile(stateFile)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(stateFile, b[:len(b)/3], 0o600); err != nil {
				t.Fatal(err)
			}
		})
		wantLog(t, log, "node state damaged", "recovered a network from its pinned namespace and its records in etcd")
		alive(t, log)
		if _, err := os.Stat(stateFile + ".corrupt"); err != nil {
			t.Errorf("the damaged file was not kept aside: %v", err)
		}
	})

	t.Run("bad MAC in state.json", func(t *testing.T) {
		log := restart(t, func() {
			b, err := os.ReadFile(stateFile)
			if err != nil {
				t.Fatal(err)
			}
			bad := strings.Replace(string(b), `"mac": "`+c1.MAC+`"`, `"mac": "zz:zz:not:a:mac"`, 1)
			if bad == string(b) {
				t.Fatalf("c1's MAC %s is not in state.json:\n%s", c1.MAC, b)
			}
			if err := os.WriteFile(stateFile, []byte(bad), 0o600); err != nil {
				t.Fatal(err)
			}
		})
		wantLog(t, log, "bad endpoint entry", "recovered an endpoint from its record in etcd")
		alive(t, log)
	})

	t.Run("garbage ipsec.key", func(t *testing.T) {
		keyFile := filepath.Join(stateDir, "ipsec.key")
		log := restart(t, func() {
			if err := os.WriteFile(keyFile, []byte("\x00not a key"), 0o600); err != nil {
				t.Fatal(err)
			}
		})
		fix := "remove " + keyFile
		wantLog(t, log, "encryption off", fix)
		alive(t, log)
		// A container joining an encrypted network on h1 is refused with
		// the fix (on a kernel without ESP, the missing support is named
		// beside it); h1 as the manager still allocates the network.
		enc := lab.NetworkID("stateenc")
		if _, err := l.CreateNetwork(enc, map[string]string{"encrypted": ""}, lab.Pool{Subnet: "198.18.30.0/24", Gateway: "198.18.30.1"}); err != nil {
			t.Fatalf("encrypted network with a garbage ipsec.key on the manager h1: %v; want it allocated", err)
		}
		_, err := h1.Run(enc, "198.18.30.10/24")
		if err == nil || !strings.Contains(err.Error(), fix) {
			t.Errorf("a container joining an encrypted network on h1: %v; want a refusal naming %q", err, fix)
		}
		if err != nil && ipsec.Probe() != nil && !strings.Contains(err.Error(), "CONFIG_INET_ESP") {
			t.Errorf("refusal on a kernel without ESP: %v; want the missing support named too", err)
		}
		if err := l.RemoveNetwork(enc); err != nil {
			t.Error(err)
		}
		t.Logf("refused: %v", err)
		if b, _ := os.ReadFile(keyFile); string(b) != "\x00not a key" {
			t.Error("the garbage key file was replaced behind the operator's back")
		}
		// The fix works: without the file, a new key pair is made.
		h1.Stop()
		os.Remove(keyFile)
		h1.Start()
		eventually(t, "a new ipsec.key", func() error {
			_, err := os.Stat(keyFile)
			return err
		})
		pingAll(t, []*lab.Container{c1, c2})
	})
}
