// Package ids checks the identifiers Docker hands a plugin before they
// become file names, interface names or etcd keys. Docker makes them in
// two known forms; anything else is refused, so a hostile or broken
// caller cannot reach outside vxnet's directories or key prefix.
package ids

import "fmt"

const (
	// dockerIDLen is the length of an ID made by Docker's stringid
	// package: 32 random bytes in lowercase hex. Local networks and every
	// endpoint have one.
	dockerIDLen = 64
	// swarmIDLen is the length of an ID made by swarmkit's identity
	// package: a random number in base 36, zero-padded. Swarm networks
	// have one.
	swarmIDLen = 25
	// quoteMax is how much of a bad ID an error quotes.
	quoteMax = 32
)

// Network checks a network ID: Docker's 64 hex digits or swarm's 25
// base-36 digits.
func Network(nid string) error {
	if isDockerID(nid) || isSwarmID(nid) {
		return nil
	}
	return fmt.Errorf("network ID %s is not a Docker network ID (64 hex digits, or 25 lowercase letters and digits for swarm)", Quote(nid))
}

// Endpoint checks an endpoint ID: Docker's 64 hex digits.
func Endpoint(eid string) error {
	if isDockerID(eid) {
		return nil
	}
	return fmt.Errorf("endpoint ID %s is not a Docker endpoint ID (64 hex digits)", Quote(eid))
}

func isDockerID(s string) bool {
	if len(s) != dockerIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func isSwarmID(s string) bool {
	if len(s) != swarmIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'z') {
			return false
		}
	}
	return true
}

// Quote returns s quoted for an error or a log line, cut to a short
// prefix: bad input is named, never echoed whole.
func Quote(s string) string {
	if len(s) <= quoteMax {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q… (%d bytes)", s[:quoteMax], len(s))
}
