package ids

import (
	"strings"
	"testing"
)

const (
	dockerID = "f2c221115894e03d492e865890782b4c07441e4b3bab3bde84d54cdceacc4701"
	swarmID  = "pcw5sqh15yh5tp3hz7kb8zw96"
)

func TestForms(t *testing.T) {
	for _, tc := range []struct {
		id                string
		network, endpoint bool
	}{
		{dockerID, true, true},
		{swarmID, true, false},
		{"../victim.txt", false, false},
		{"", false, false},
		{"a/b", false, false},
		{"x\x00y", false, false},
		{dockerID + "0", false, false},            // 65 hex digits
		{strings.ToUpper(dockerID), false, false}, // uppercase
		{strings.ToUpper(swarmID), false, false},
		{swarmID[:24], false, false},
		{swarmID[:24] + "-", false, false},
		{dockerID[:63] + "g", false, false},
	} {
		if got := Network(tc.id) == nil; got != tc.network {
			t.Errorf("Network(%q) ok = %v; want %v", tc.id, got, tc.network)
		}
		if got := Endpoint(tc.id) == nil; got != tc.endpoint {
			t.Errorf("Endpoint(%q) ok = %v; want %v", tc.id, got, tc.endpoint)
		}
	}
}

func TestQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", `""`},
		{"a/b\x00", `"a/b\x00"`},
		{strings.Repeat("a", 32), `"` + strings.Repeat("a", 32) + `"`},
		{strings.Repeat("a", 1<<20), `"` + strings.Repeat("a", 32) + `"… (1048576 bytes)`},
	} {
		if got := Quote(tc.in); got != tc.want {
			t.Errorf("Quote(%.40q) = %s; want %s", tc.in, got, tc.want)
		}
	}
	err := Network(strings.Repeat("/", 1<<20))
	if want := `network ID "////////////////////////////////"… (1048576 bytes) is not a Docker network ID (64 hex digits, or 25 lowercase letters and digits for swarm)`; err == nil || err.Error() != want {
		t.Errorf("error for a 1 MiB ID: %v; want %s", err, want)
	}
}
