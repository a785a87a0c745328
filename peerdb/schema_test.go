package peerdb

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

func TestVersionedEncoding(t *testing.T) {
	b, err := MarshalVersioned(Key{"n", "e"})
	if err != nil || !strings.HasPrefix(string(b), `{"schema":"`+Schema.String()+`","NID":"n"`) {
		t.Fatalf("MarshalVersioned = %s, %v; want the schema first", b, err)
	}
	if b, _ := MarshalVersioned(struct{}{}); string(b) != `{"schema":"`+Schema.String()+`"}` {
		t.Fatalf("empty object: %s", b)
	}
	if _, err := MarshalVersioned([]int{1}); err == nil {
		t.Fatal("a list encoded as a versioned object")
	}
	newer := fmt.Sprintf("%d.0", Schema.Major+1)
	for in, want := range map[string]error{
		`{"NID":"n"}`: nil, // before versions: 1.0
		`{"schema":"` + fmt.Sprintf("%d.%d", Schema.Major, Schema.Minor+5) + `","NID":"n"}`: nil,
		`{"schema":"` + newer + `","NID":"n"}`:                                              ErrNewerSchema,
		`{"schema":"x","NID":"n"}`:                                                          ErrNewerSchema,
		`{"schema":"1.0`:                                                                    ErrNewerSchema,
	} {
		var k Key
		err := UnmarshalVersioned([]byte(in), &k)
		if !errors.Is(err, want) || (want == nil && (err != nil || k.NID != "n")) {
			t.Errorf("UnmarshalVersioned(%s) = %v, %+v; want %v", in, err, k, want)
		}
		if want != nil && !strings.Contains(err.Error(), "upgrade vxnet on this host") {
			t.Errorf("refusal does not name the fix: %v", err)
		}
	}
}

// A record or a gossip message from a newer major is not taken.
func TestNewerSchemaRefused(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	s := &Store{prefix: "/vxnet", log: logrus.NewEntry(log)}
	newer := fmt.Sprintf(`{"schema":"%d.0",`, Schema.Major+1)
	body := `"nid":"n","eid":"e1","ip":"198.18.0.5","mac":"02:56:c6:12:00:05","vtep":"192.0.2.11","node":"h1"}`
	if _, ok := s.decodeEndpoint(&mvccpb.KeyValue{Key: []byte("/vxnet/endpoints/n/e1"), Value: []byte(newer + body)}); ok {
		t.Error("endpoint record of a newer major taken")
	}
	if _, ok := s.decodeEndpoint(&mvccpb.KeyValue{Key: []byte("/vxnet/endpoints/n/e1"), Value: []byte("{" + body)}); !ok {
		t.Error("endpoint record without a schema (1.0) refused")
	}

	tt := newTestTable(t)
	m := h1.put(t, h1.rec("e1", "198.18.0.5", v(1), 0))
	m.Payload = append([]byte(newer), m.Payload[1:]...)
	m = resign(t, h1, m.Payload)
	if ch, _ := tt.Gossip(m); len(ch) != 0 || tt.Refused()["schema"] != 1 {
		t.Errorf("gossip of a newer major: changes %v, refused %v; want refused for schema", ch, tt.Refused())
	}
}

func resign(t *testing.T, n tnode, payload []byte) SignedUpdate {
	t.Helper()
	return SignedUpdate{Node: n.Name, Payload: payload, Sig: ed25519.Sign(n.sign, append([]byte(gossipContext), payload...))}
}

// A newer major written by another tool, not in vxnet's form, is found
// all the same.
func TestSchemaFoundAnywhere(t *testing.T) {
	newer := fmt.Sprintf("%d.0", Schema.Major+1)
	for _, in := range []string{
		`{ "schema": "` + newer + `", "NID": "n"}`,
		"\n" + `{"schema":"` + newer + `"}`,
		`{"NID":"n","schema":"` + newer + `"}`,
		`{"NID":"n","schema":2}`,
	} {
		var k Key
		if err := UnmarshalVersioned([]byte(in), &k); !errors.Is(err, ErrNewerSchema) {
			t.Errorf("UnmarshalVersioned(%q) = %v; want refused", in, err)
		}
	}
	if v := SchemaOf([]byte(`{"NID":"n","x":{"schema":"9.0"}}`)); v != legacy {
		t.Errorf("a nested schema member read as the record's: %v", v)
	}
}
