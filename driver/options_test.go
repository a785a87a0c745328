package driver

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		raw      map[string]string
		wantVNIs string
		wantMTU  int
		wantErr  string
	}{
		{raw: nil, wantVNIs: "[]"},
		{raw: map[string]string{OptVNIs: "4097, 4098"}, wantVNIs: "[4097 4098]"},
		{raw: map[string]string{OptMTU: "9000"}, wantVNIs: "[]", wantMTU: 9000},
		{raw: map[string]string{OptMTU: "abc"}, wantErr: "want the underlay MTU in bytes, 118-65535"},
		{raw: map[string]string{OptMTU: "100"}, wantErr: "118-65535"},
		{raw: map[string]string{OptVNIs: "0"}, wantErr: "is not a VNI"},
		{raw: map[string]string{OptVNIs: "16777216"}, wantErr: "is not a VNI"},
		{raw: map[string]string{OptVNIs: "5,5"}, wantErr: "given twice"},
		{raw: map[string]string{"foo": "bar", "a": ""}, wantErr: "unknown option a, foo; vxnet accepts: " + OptMTU},
		{raw: map[string]string{OptEncrypted: "maybe"}, wantErr: "give it without a value (--opt encrypted) or as true/false"},
		{raw: map[string]string{OptName: "blue-1.a_b"}, wantVNIs: "[]"},
		{raw: map[string]string{OptName: ".."}, wantErr: `option vxnet.network="..": want a name of 1-64 letters`},
		{raw: map[string]string{OptName: "a/b"}, wantErr: `option vxnet.network="a/b": want a name`},
		{raw: map[string]string{OptName: "x\x00y"}, wantErr: `option vxnet.network="x\x00y": want a name`},
		{raw: map[string]string{OptName: "-o"}, wantErr: `option vxnet.network="-o": want a name`},
		{raw: map[string]string{OptName: strings.Repeat("a", 65)}, wantErr: `option vxnet.network="aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"… (65 bytes): want a name`},
		{raw: map[string]string{"../x": "", "b\nc": "", "c": "", "d": "", "e": "", "f": ""}, wantErr: `unknown option "../x", "b\nc", c, d, e, and 1 more; vxnet accepts`},
	} {
		o, err := parseOptions(tc.raw)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalid) {
				t.Errorf("parseOptions(%v) = %v; want ErrInvalid containing %q", tc.raw, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseOptions(%v): %v", tc.raw, err)
			continue
		}
		if got := fmt.Sprint(o.vnis); got != tc.wantVNIs && !(got == "[]" && tc.wantVNIs == "[]") {
			t.Errorf("parseOptions(%v).vnis = %s; want %s", tc.raw, got, tc.wantVNIs)
		}
		if o.mtu != tc.wantMTU {
			t.Errorf("parseOptions(%v).mtu = %d; want %d", tc.raw, o.mtu, tc.wantMTU)
		}
	}
}

func TestParseSubnets(t *testing.T) {
	for _, tc := range []struct {
		v4, v6  []ipamData
		want    string
		wantErr string
	}{
		{v4: []ipamData{{"198.18.90.0/24", "198.18.90.1/24"}}, want: "[198.18.90.0/24] [198.18.90.1] [] []"},
		{v4: []ipamData{{"198.18.90.7/24", "198.18.90.1"}, {"198.18.91.0/24", ""}}, want: "[198.18.90.0/24 198.18.91.0/24] [198.18.90.1 invalid IP] [] []"},
		{v4: nil, wantErr: "--subnet"},
		{v4: []ipamData{{"198.18.90.0/24", ""}}, v6: []ipamData{{"fd00:1::/64", "fd00:1::1"}, {"fd00:2::/64", ""}},
			want: "[198.18.90.0/24] [invalid IP] [fd00:1::/64 fd00:2::/64] [fd00:1::1 invalid IP]"},
		{v6: []ipamData{{"fd00:1::/64", ""}}, want: "[] [] [fd00:1::/64] [invalid IP]"},
		{v4: []ipamData{{"198.18.90.0/24", ""}, {"198.18.91.0/24", ""}}, v6: []ipamData{{"fd00:1::/64", ""}}, wantErr: "takes one IPv4 subnet"},
		{v6: []ipamData{{"198.18.90.0/24", ""}}, wantErr: "not an IPv6 CIDR"},
		// Swarm gives IPv6 pools as IPv4 data: the address decides.
		{v4: []ipamData{{"198.18.90.0/24", ""}, {"fd00:1::/64", "fd00:1::1"}}, want: "[198.18.90.0/24] [invalid IP] [fd00:1::/64] [fd00:1::1]"},
		{v4: []ipamData{{"::ffff:198.18.0.0/120", ""}}, wantErr: "not an IPv4 CIDR"},
		{v6: []ipamData{{"::ffff:198.18.0.0/120", ""}}, wantErr: "not an IPv6 CIDR"},
		{v6: []ipamData{{"fd00:1::/64", "198.18.0.1"}}, wantErr: "not an IPv6 address"},
		{v6: []ipamData{{"fd00:1::/64", "fd00:2::1"}}, wantErr: "outside subnet"},
		{v6: []ipamData{{"fd00::/48", ""}, {"fd00:0:0:1::/64", ""}}, wantErr: "overlap"},
		{v4: []ipamData{{"198.18.0.0/16", ""}, {"198.18.90.0/24", ""}}, wantErr: "overlap"},
		{v4: []ipamData{{"198.18.90.0/24", "198.18.91.1/24"}}, wantErr: "outside subnet"},
		{v4: []ipamData{{"nonsense", ""}}, wantErr: "not an IPv4 CIDR"},
	} {
		s, err := parseSubnets(tc.v4, tc.v6)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseSubnets(%v, %v) = %v; want error containing %q", tc.v4, tc.v6, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseSubnets(%v, %v): %v", tc.v4, tc.v6, err)
			continue
		}
		if got := fmt.Sprint(s.v4, " ", s.gws4, " ", s.v6, " ", s.gws6); got != tc.want {
			t.Errorf("parseSubnets(%v, %v) = %s; want %s", tc.v4, tc.v6, got, tc.want)
		}
	}
}
