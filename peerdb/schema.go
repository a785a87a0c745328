package peerdb

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Everything vxnet writes to etcd, gossips, or saves in its state file
// carries the schema version of its format, "MAJOR.MINOR", as the first
// member of its JSON object:
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
// -ldflags "-X github.com/vxnet/vxnet/peerdb.schema=1.1".
var schema = "1.0"

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

// SchemaOf returns the version a JSON object says it was written in: its
// first member, or 1.0 if it has none. An unreadable version counts as
// newer than any: it cannot be this build's.
func SchemaOf(b []byte) Version {
	rest, ok := bytes.CutPrefix(b, schemaPrefix)
	if !ok {
		return legacy
	}
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return Version{Major: int(^uint(0) >> 1)}
	}
	v, err := ParseVersion(string(rest[:end]))
	if err != nil {
		return Version{Major: int(^uint(0) >> 1)}
	}
	return v
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
