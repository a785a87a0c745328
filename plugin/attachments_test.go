package plugin

import (
	"errors"
	"fmt"
	"testing"
)

type attachLog struct{ calls []string }

func (a *attachLog) Attach(nid, eid, key string) {
	a.calls = append(a.calls, fmt.Sprintf("attach %s %.8s %s", nid, eid, key))
}
func (a *attachLog) Detach(nid, eid string) {
	a.calls = append(a.calls, fmt.Sprintf("detach %s %.8s", nid, eid))
}

// Join tells the attachments of the container's sandbox key once the
// driver joined the endpoint, not when it refused; Leave tells them too.
func TestJoinAndLeaveReachAttachments(t *testing.T) {
	r := &recorder{}
	h := newHandler(r)
	a := &attachLog{}
	h.SetAttachments(a)
	join := []byte(`{"EndpointID": "54d147c63a3aae3ee9de431bcc31271c14cfb4100b1fd91439b624d00ef9f865", "NetworkID": "pcw5sqh15yh5tp3hz7kb8zw96", "SandboxKey": "/var/run/docker/netns/807e0ca70d43"}`)
	leave := []byte(`{"EndpointID": "54d147c63a3aae3ee9de431bcc31271c14cfb4100b1fd91439b624d00ef9f865", "NetworkID": "pcw5sqh15yh5tp3hz7kb8zw96"}`)
	if code, _ := post(t, h, "NetworkDriver.Join", join); code != 200 {
		t.Fatalf("join: %d", code)
	}
	r.err = errors.New("refused")
	post(t, h, "NetworkDriver.Join", join)
	r.err = nil
	post(t, h, "NetworkDriver.Leave", leave)
	want := "[attach pcw5sqh15yh5tp3hz7kb8zw96 54d147c6 /var/run/docker/netns/807e0ca70d43 detach pcw5sqh15yh5tp3hz7kb8zw96 54d147c6]"
	if got := fmt.Sprint(a.calls); got != want {
		t.Errorf("got %s; want %s", got, want)
	}
}
