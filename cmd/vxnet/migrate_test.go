package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// Captured from the Docker lab (dockerd 20.10.24 in swarm, on the manager):
//
//	docker network create -d overlay --attachable plain
//	docker network create -d overlay --attachable --subnet 198.18.70.0/24 --gateway 198.18.70.254 \
//	    --ip-range 198.18.70.128/25 --aux-address r=198.18.70.2 -o com.docker.network.driver.mtu=1400 --label team=web ranged
//	docker network create -d overlay --ipv6 --subnet 198.18.71.0/24 --subnet fd00:71::/64 --internal -o encrypted dual
//	docker network inspect plain ranged dual ingress
//
// Swarm shows the VNIs it allocated (one per subnet, the IPv6 one too) as
// vxlanid_list, and no --aux-address at all.
const inspect2010 = `[
    {
        "Name": "plain",
        "Id": "04l3eb1p8uh9ibul2p35jpzno",
        "Created": "2026-11-28T05:55:05.228749531Z",
        "Scope": "swarm",
        "Driver": "overlay",
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": null,
            "Config": [
                {
                    "Subnet": "198.18.129.0/24",
                    "Gateway": "198.18.129.1"
                }
            ]
        },
        "Internal": false,
        "Attachable": true,
        "Ingress": false,
        "ConfigFrom": {
            "Network": ""
        },
        "ConfigOnly": false,
        "Containers": null,
        "Options": {
            "com.docker.network.driver.overlay.vxlanid_list": "4097"
        },
        "Labels": null
    },
    {
        "Name": "ranged",
        "Id": "vcdamv521kj1ilmsevg07gbs5",
        "Created": "2026-11-28T05:55:05.255515243Z",
        "Scope": "swarm",
        "Driver": "overlay",
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": null,
            "Config": [
                {
                    "Subnet": "198.18.70.0/24",
                    "IPRange": "198.18.70.128/25",
                    "Gateway": "198.18.70.254"
                }
            ]
        },
        "Internal": false,
        "Attachable": true,
        "Ingress": false,
        "ConfigFrom": {
            "Network": ""
        },
        "ConfigOnly": false,
        "Containers": null,
        "Options": {
            "com.docker.network.driver.mtu": "1400",
            "com.docker.network.driver.overlay.vxlanid_list": "4098"
        },
        "Labels": {
            "team": "web"
        }
    },
    {
        "Name": "dual",
        "Id": "7035cdniwvie2jxzah259swze",
        "Created": "2026-11-28T05:55:11.529292805Z",
        "Scope": "swarm",
        "Driver": "overlay",
        "EnableIPv6": true,
        "IPAM": {
            "Driver": "default",
            "Options": null,
            "Config": [
                {
                    "Subnet": "198.18.71.0/24",
                    "Gateway": "198.18.71.1"
                },
                {
                    "Subnet": "fd00:71::/64",
                    "Gateway": "fd00:71::1"
                }
            ]
        },
        "Internal": true,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {
            "Network": ""
        },
        "ConfigOnly": false,
        "Containers": null,
        "Options": {
            "com.docker.network.driver.overlay.vxlanid_list": "4099,4100",
            "encrypted": ""
        },
        "Labels": null
    },
    {
        "Name": "ingress",
        "Id": "3ja2h4v269lmfm29izi9ks6vw",
        "Created": "2026-11-28T05:53:24.748930629Z",
        "Scope": "swarm",
        "Driver": "overlay",
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": null,
            "Config": [
                {
                    "Subnet": "198.18.128.0/24",
                    "Gateway": "198.18.128.1"
                }
            ]
        },
        "Internal": false,
        "Attachable": false,
        "Ingress": true,
        "ConfigFrom": {
            "Network": ""
        },
        "ConfigOnly": false,
        "Containers": {
            "ingress-sbox": {
                "Name": "ingress-endpoint",
                "EndpointID": "a8c1500e23210aa3e298eb5fb3337d7dd3aa9c6663759c495019057f092f7407",
                "MacAddress": "02:42:c6:12:80:02",
                "IPv4Address": "198.18.128.2/24",
                "IPv6Address": ""
            }
        },
        "Options": {
            "com.docker.network.driver.overlay.vxlanid_list": "4096"
        },
        "Labels": {},
        "Peers": [
            {
                "Name": "3d1df522b14c",
                "IP": "192.0.2.11"
            }
        ]
    }
]`

// One network as the API's GET /networks/ID gives it on Docker 28 (moby's
// api/types/network.Inspect: EnableIPv4, and AuxiliaryAddresses where a
// daemon keeps them), with options vxnet does not know and a stack's label.
const inspect28 = `{
    "Name": "shop_back",
    "Id": "q1w2e3r4t5y6u7i8o9p0a1s2d",
    "Created": "2025-06-01T12:00:00.000000000Z",
    "Scope": "swarm",
    "Driver": "overlay",
    "EnableIPv4": true,
    "EnableIPv6": false,
    "IPAM": {
        "Driver": "default",
        "Options": null,
        "Config": [
            {"Subnet": "10.20.0.0/24", "IPRange": "10.20.0.64/26", "Gateway": "10.20.0.1", "AuxiliaryAddresses": {"router": "10.20.0.2"}},
            {"Subnet": "10.21.0.0/24", "Gateway": "10.21.0.1"}
        ]
    },
    "Internal": false,
    "Attachable": false,
    "Ingress": false,
    "ConfigFrom": {"Network": ""},
    "ConfigOnly": false,
    "Containers": {},
    "Options": {
        "com.docker.network.driver.overlay.vxlanid_list": "4200,4201",
        "com.docker.network.driver.mtu": "9000",
        "com.example.tuning": "fast"
    },
    "Labels": {"com.docker.stack.namespace": "shop", "owner": "team b"},
    "Peers": null
}`

func networksOf(t *testing.T, raw string) map[string]inspectedNetwork {
	t.Helper()
	nets, err := parseInspect([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]inspectedNetwork{}
	for _, n := range nets {
		m[n.Name] = n
	}
	return m
}

func TestTranslate(t *testing.T) {
	nets := networksOf(t, inspect2010)
	nets["shop_back"] = networksOf(t, inspect28)["shop_back"]
	const drv = "vxnet:latest"
	for _, tc := range []struct {
		net       string
		opts      equivalentOptions
		want      string   // the command, quoted as printed
		notes     []string // a word of each note, in order
		dropped   []string // a word of each thing not carried over
		wantError string
	}{
		{net: "plain", opts: equivalentOptions{driver: drv},
			want:  "docker network create -d vxnet:latest --attachable plain-vxnet",
			notes: []string{"subnets 198.18.129.0/24 not copied", "VNIs 4097", "no com.docker.network.driver.mtu"}},
		{net: "plain", opts: equivalentOptions{driver: "registry.example/vxnet:1.2", name: "front"},
			want:  "docker network create -d registry.example/vxnet:1.2 --attachable front",
			notes: []string{"not copied", "VNIs", "MTU"}},
		{net: "ranged", opts: equivalentOptions{driver: drv},
			want:  "docker network create -d vxnet:latest --attachable -o com.docker.network.driver.mtu=1400 --label team=web ranged-vxnet",
			notes: []string{"subnets 198.18.70.0/24 not copied", "VNIs 4098"}},
		// Into a subnet of its own: the gateway and the range keep their offsets.
		{net: "ranged", opts: equivalentOptions{driver: drv, subnets: []netip.Prefix{netip.MustParsePrefix("198.18.72.0/24")}},
			want:  "docker network create -d vxnet:latest --attachable --subnet 198.18.72.0/24 --gateway 198.18.72.254 --ip-range 198.18.72.128/25 -o com.docker.network.driver.mtu=1400 --label team=web ranged-vxnet",
			notes: []string{"VNIs 4098"}},
		{net: "ranged", opts: equivalentOptions{driver: drv, subnets: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}},
			want:  "docker network create -d vxnet:latest --attachable --subnet 10.1.0.0/16 --gateway 10.1.0.254 --ip-range 10.1.0.128/25 -o com.docker.network.driver.mtu=1400 --label team=web ranged-vxnet",
			notes: []string{"VNIs 4098"}},
		{net: "ranged", opts: equivalentOptions{driver: drv, inPlace: true},
			want:  "docker network create -d vxnet:latest --attachable --subnet 198.18.70.0/24 --gateway 198.18.70.254 --ip-range 198.18.70.128/25 -o com.docker.network.driver.mtu=1400 -o com.docker.network.driver.overlay.vxlanid_list=4098 --label team=web ranged-vxnet",
			notes: []string{"subnets kept", "VNIs 4098 kept"}},
		{net: "ranged", opts: equivalentOptions{driver: drv, subnets: []netip.Prefix{netip.MustParsePrefix("198.18.70.128/25")}},
			wantError: "--subnet 198.18.70.128/25 overlaps the old network's 198.18.70.0/24"},
		{net: "ranged", opts: equivalentOptions{driver: drv, subnets: []netip.Prefix{netip.MustParsePrefix("198.18.72.0/25")}},
			wantError: "--subnet 198.18.72.0/25 is smaller than 198.18.70.0/24"},
		{net: "ranged", opts: equivalentOptions{driver: drv, subnets: []netip.Prefix{netip.MustParsePrefix("198.18.72.0/24"), netip.MustParsePrefix("198.18.73.0/24")}},
			wantError: "2 --subnet given for 1 IPv4 subnets (198.18.70.0/24)"},
		// Moved, the IPv6 subnet needs one of the user's; encryption and
		// --internal come along.
		{net: "dual", opts: equivalentOptions{driver: drv},
			want:    "docker network create -d vxnet:latest --internal -o encrypted dual-vxnet",
			notes:   []string{"subnets 198.18.71.0/24 not copied", "VNIs 4099,4100", "encrypted", "no com.docker.network.driver.mtu"},
			dropped: []string{"--ipv6 and subnets fd00:71::/64 not copied"}},
		// In place, both subnets and only the IPv4 subnet's VNI (swarm
		// numbered the IPv6 one too).
		{net: "dual", opts: equivalentOptions{driver: drv, inPlace: true},
			want:  "docker network create -d vxnet:latest --internal --ipv6 --subnet 198.18.71.0/24 --gateway 198.18.71.1 --subnet fd00:71::/64 --gateway fd00:71::1 -o com.docker.network.driver.overlay.vxlanid_list=4099 -o encrypted dual-vxnet",
			notes: []string{"subnets kept", "VNIs 4099 kept", "encrypted", "MTU"}},
		{net: "ingress", opts: equivalentOptions{driver: drv}, wantError: "ingress network"},
		// Docker 28's shape: two subnets, auxiliary addresses, an option
		// vxnet refuses, a stack's network.
		{net: "shop_back", opts: equivalentOptions{driver: drv, subnets: []netip.Prefix{netip.MustParsePrefix("10.30.0.0/24"), netip.MustParsePrefix("10.31.0.0/24")}},
			want:    "docker network create -d vxnet:latest --subnet 10.30.0.0/24 --gateway 10.30.0.1 --ip-range 10.30.0.64/26 --aux-address router=10.30.0.2 --subnet 10.31.0.0/24 --gateway 10.31.0.1 -o com.docker.network.driver.mtu=9000 --label 'owner=team b' shop_back-vxnet",
			notes:   []string{"VNIs 4200,4201", "stack shop"},
			dropped: []string{"-o com.example.tuning=fast: vxnet refuses options it does not know"}},
		{net: "shop_back", opts: equivalentOptions{driver: drv, inPlace: true},
			want:    "docker network create -d vxnet:latest --subnet 10.20.0.0/24 --gateway 10.20.0.1 --ip-range 10.20.0.64/26 --aux-address router=10.20.0.2 --subnet 10.21.0.0/24 --gateway 10.21.0.1 -o com.docker.network.driver.mtu=9000 -o com.docker.network.driver.overlay.vxlanid_list=4200,4201 --label 'owner=team b' shop_back-vxnet",
			notes:   []string{"subnets kept", "VNIs 4200,4201 kept", "stack shop"},
			dropped: []string{"com.example.tuning"}},
	} {
		tr, err := translate(nets[tc.net], tc.opts)
		what := fmt.Sprintf("%s (subnets %v, in place %v, name %q)", tc.net, tc.opts.subnets, tc.opts.inPlace, tc.opts.name)
		if tc.wantError != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantError) {
				t.Errorf("%s: got error %v; want %q", what, err, tc.wantError)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", what, err)
			continue
		}
		if got := strings.Join(quoteAll(tr.argv()), " "); got != tc.want {
			t.Errorf("%s:\ngot  %s\nwant %s", what, got, tc.want)
		}
		if !containsInOrder(tr.notes, tc.notes) {
			t.Errorf("%s: notes %q; want, in order, ones saying %q", what, tr.notes, tc.notes)
		}
		if !containsInOrder(tr.dropped, tc.dropped) {
			t.Errorf("%s: not carried over %q; want ones saying %q", what, tr.dropped, tc.dropped)
		}
	}
}

// containsInOrder reports whether got has one entry per want, each
// containing its want.
func containsInOrder(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range want {
		if !strings.Contains(got[i], want[i]) {
			return false
		}
	}
	return true
}

// Networks that have no vxnet equivalent, or are not overlay networks.
func TestTranslateRefuses(t *testing.T) {
	for _, tc := range []struct {
		json, want string
	}{
		{`{"Name":"b","Driver":"bridge","Scope":"local"}`, `not a stock overlay network (driver "bridge")`},
		{`{"Name":"v","Driver":"vxnet:latest","Scope":"swarm"}`, "already a vxnet network"},
		{`{"Name":"v","Driver":"192.0.2.3:5000/vxnet:t1","Scope":"swarm"}`, "already a vxnet network"},
		{`{"Name":"c","Driver":"overlay","Scope":"swarm","ConfigOnly":true}`, "--config-only"},
		{`{"Name":"g","Driver":"overlay","Scope":"global"}`, `scope "global", not a swarm network`},
		{`{"Name":"six","Driver":"overlay","Scope":"swarm","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"198.18.1.0/24"},{"Subnet":"198.18.2.0/24"},{"Subnet":"fd00:1::/64"}]}}`, "IPv6 with 2 IPv4 subnets"},
	} {
		nets, err := parseInspect([]byte(tc.json))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := translate(nets[0], equivalentOptions{driver: "vxnet:latest"}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v; want %q", tc.json, err, tc.want)
		}
	}
}

// rawNetwork is the i-th network of an inspect array, as it is there.
func rawNetwork(t *testing.T, array string, i int) string {
	t.Helper()
	var nets []json.RawMessage
	if err := json.Unmarshal([]byte(array), &nets); err != nil {
		t.Fatal(err)
	}
	return string(nets[i])
}

// The whole command: what it prints for docker network inspect's output
// on stdin, and its exit status.
func TestEquivalentCommand(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		stdin   string
		want    string // stdout, exactly
		wantErr string
	}{
		{args: []string{"--subnet", "198.18.72.0/24", "-"}, stdin: "[" + rawNetwork(t, inspect2010, 1) + "]",
			want: `# vxnet equivalent of stock overlay network ranged
# note: VNIs 4098 (com.docker.network.driver.overlay.vxlanid_list) not copied: the stock overlay uses them on the same hosts and UDP port while both networks exist; vxnet takes its own from VXNET_VNI_RANGE (--in-place keeps them)
docker network create -d vxnet:latest \
    --attachable \
    --subnet 198.18.72.0/24 \
    --gateway 198.18.72.254 \
    --ip-range 198.18.72.128/25 \
    -o com.docker.network.driver.mtu=1400 \
    --label team=web \
    ranged-vxnet
`},
		// Every network is printed; the ingress network is refused and
		// the IPv6 subnet dropped, so the exit status says so.
		{args: []string{"-"}, stdin: inspect2010, wantErr: "network ingress: the swarm's ingress network"},
		{args: []string{"--name", "x", "-"}, stdin: inspect2010, wantErr: "--name names one new network"},
		{args: []string{"--name", "x", "a", "b"}, wantErr: "--name names one new network; give one network"},
		{args: []string{"--in-place", "--subnet", "10.0.0.0/24", "-"}, wantErr: "--in-place keeps the old network's subnets"},
		{args: []string{"--subnet", "10.0.0.1/24", "-"}, wantErr: "want an IPv4 subnet"},
		{args: []string{"-"}, stdin: "[]", wantErr: "no network in the input"},
		{args: []string{"-"}, stdin: "Error: No such network: x", wantErr: "read docker network inspect's JSON"},
		{args: nil, wantErr: "name a network"},
	} {
		var out bytes.Buffer
		err := equivalent(tc.args, strings.NewReader(tc.stdin), &out)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: got error %v; want %q", tc.args, err, tc.wantErr)
			}
		} else if err != nil {
			t.Errorf("%v: %v", tc.args, err)
		}
		if tc.want != "" && out.String() != tc.want {
			t.Errorf("%v: got\n%s\nwant\n%s", tc.args, out.String(), tc.want)
		}
	}

	// All four networks: three commands, the ingress network refused,
	// the IPv6 subnet reported; exit 1 for both.
	var out bytes.Buffer
	err := equivalent([]string{"-"}, strings.NewReader(inspect2010), &out)
	if got := strings.Count(out.String(), "docker network create"); got != 3 {
		t.Errorf("%d commands printed; want 3:\n%s", got, out.String())
	}
	if !strings.Contains(out.String(), "# NOT CARRIED OVER: --ipv6") || !errors.Is(err, errDropped) {
		t.Errorf("IPv6 not reported as dropped: %v\n%s", err, out.String())
	}
}

func TestShellQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"team=web", "team=web"},
		{"registry.example:5000/vxnet:1.2", "registry.example:5000/vxnet:1.2"},
		{"owner=team b", "'owner=team b'"},
		{"it's", `'it'\''s'`},
		{"$(rm -rf /)", "'$(rm -rf /)'"},
		{"", "''"},
	} {
		if got := shellQuote(tc.in); got != tc.want {
			t.Errorf("shellQuote(%q) = %s; want %s", tc.in, got, tc.want)
		}
	}
}
