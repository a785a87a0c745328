package peerdb

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Every record vxnet writes to etcd as JSON, every gossip payload and its
// state file carry the schema version of their format, "MAJOR.MINOR", as
// the first member of their JSON object (the VNI claims, a bare network
// ID, and gossip's signed envelope, which only wraps a payload, have
// none):
//
//	{"schema":"1.0", ...}
//
// A minor version adds fields that older readers may ignore; a major one
// changes what existing fields mean. A node reads its own and every older
// version (a record without one is 1.0, written before versions were),
// and any minor version of its own major; a newer major is refused, with
// a message naming both versions and the fix, instead of being misread.
// So during a rolling upgrade old and new plugins work together as long
// as the major stays; a new major needs every host upgraded first (its
// release says so).

// schema is the version this build writes. Test builds set another with
// -ldflags "-X github.com/vxnet/vxnet/peerdb.schema=1.2".
//
//	1.0  the first versioned formats
//	1.1  IPv6: endpoint records' ip6 (and ip may be empty), network
//	     records' subnets6, the state file's addr6. A 1.0 reader ignores
//	     them: it programs a dual-stack endpoint's IPv4 address only, and
//	     refuses an IPv6-only one (no IPv4 address) as invalid.
var schema = "1.1"

// Version is a schema version.
type Version struct{ Major, Minor int }

// Schema is the version this build writes, and the newest major it reads.
var Schema = mustParseVersion(schema)

// legacy is the version of records written before versions were.
var legacy = Version{1, 0}

// ErrNewerSchema says a record or message comes from a newer major version.
var ErrNewerSchema = errors.New("written by a newer vxnet")

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// ParseVersion parses "MAJOR.MINOR".
func ParseVersion(s string) (Version, error) {
	a, b, ok := strings.Cut(s, ".")
	major, err1 := strconv.Atoi(a)
	minor, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || major < 1 || minor < 0 {
		return Version{}, fmt.Errorf("schema version %.16q is not MAJOR.MINOR", s)
	}
	return Version{major, minor}, nil
}

func mustParseVersion(s string) Version {
	v, err := ParseVersion(s)
	if err != nil {
		panic(err) // a build with a bad -X value
	}
	return v
}

// CheckSchema returns an error wrapping ErrNewerSchema unless this build
// reads what version v wrote.
func CheckSchema(v Version) error {
	if v.Major > Schema.Major {
		return fmt.Errorf("%w (schema %s; this one reads up to %d.x): upgrade vxnet on this host", ErrNewerSchema, v, Schema.Major)
	}
	return nil
}

var schemaPrefix = []byte(`{"schema":"`)

// unreadable stands for a version that cannot be read: newer than any,
// so it is refused.
var unreadable = Version{Major: int(^uint(0) >> 1)}

// SchemaOf returns the version a JSON object says it was written in, or
// 1.0 if it says none. vxnet writes it first, which is read at once;
// an object encoded otherwise (by hand, by another tool) is searched for
// a top-level "schema" member. An unreadable version counts as newer
// than any: it cannot be this build's.
func SchemaOf(b []byte) Version {
	if rest, ok := bytes.CutPrefix(b, schemaPrefix); ok {
		if end := bytes.IndexByte(rest, '"'); end >= 0 {
			if v, err := ParseVersion(string(rest[:end])); err == nil {
				return v
			}
		}
		return unreadable
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return legacy // not an object: its decoding fails on its own
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return legacy
		}
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return legacy
		}
		if key != "schema" {
			continue
		}
		var s string
		if json.Unmarshal(val, &s) != nil {
			return unreadable
		}
		v, err := ParseVersion(s)
		if err != nil {
			return unreadable
		}
		return v
	}
	return legacy
}

// MarshalVersioned encodes v, a struct, as JSON with this build's schema
// version as its first member.
func MarshalVersioned(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(b) < 2 || b[0] != '{' {
		return nil, fmt.Errorf("versioned encoding of %T: not a JSON object", v)
	}
	out := append(append([]byte{}, schemaPrefix...), Schema.String()...)
	out = append(out, '"')
	if len(b) > 2 {
		out = append(out, ',')
	}
	return append(out, b[1:]...), nil
}

// UnmarshalVersioned decodes b into v unless a newer major version wrote
// it.
func UnmarshalVersioned(b []byte, v any) error {
	if err := CheckSchema(SchemaOf(b)); err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
