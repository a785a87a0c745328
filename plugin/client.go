package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// callTimeout bounds one call of vxnet's own commands to the plugin:
// longer than any request deadline the plugin sets itself.
const callTimeout = 30 * time.Second

// Call posts req to route of the plugin listening on socket, as Docker
// does, and decodes the answer into resp (if not nil). An {"Err": ...}
// answer comes back as an error holding the plugin's words. vxnet's own
// commands and the test lab use it.
func Call(socket, route string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	c := http.Client{Timeout: callTimeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	r, err := c.Post("http://plugin/"+route, contentType, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s at %s: %w", route, socket, err)
	}
	defer r.Body.Close()
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		return fmt.Errorf("%s at %s: read answer: %w", route, socket, err)
	}
	var e struct{ Err string }
	if json.Unmarshal(raw, &e) == nil && e.Err != "" {
		return errors.New(e.Err)
	}
	if r.StatusCode != http.StatusOK {
		return fmt.Errorf("%s at %s: status %d: %s", route, socket, r.StatusCode, raw)
	}
	if resp != nil {
		return json.Unmarshal(raw, resp)
	}
	return nil
}
