package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vxnet/vxnet/driver"
	"github.com/vxnet/vxnet/plugin"
)

// errProblems makes `vxnet check` exit 1 without a second message.
var errProblems = errors.New("")

// inspect runs `vxnet status|peers|check`: it asks the running plugin over
// its socket and prints the answer.
func inspect(cmd string, args []string) error {
	fs := flag.NewFlagSet("vxnet "+cmd, flag.ContinueOnError)
	def := os.Getenv("VXNET_SOCKET")
	if def == "" {
		def = "/run/docker/plugins/vxnet.sock"
	}
	socket := fs.String("socket", def, "the plugin's socket; for a managed plugin /run/docker/plugins/ID/vxnet.sock")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	call := func(route string, req, resp any) error { return callPlugin(*socket, route, req, resp) }
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	defer w.Flush()
	switch cmd {
	case "status":
		var st driver.Status
		if err := call(plugin.StatusPath, nil, &st); err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(os.Stdout).Encode(st)
		}
		fmt.Fprintf(w, "node\t%s\nvtep\t%s\nscope\t%s\netcd\t%s\npeer table loaded\t%v\n", st.Node, st.VTEP, st.Scope, st.Etcd, st.Synced)
		fmt.Fprintf(w, "networks\t%d (%d with endpoints here)\nlocal endpoints\t%d\ncluster endpoints\t%d\n", st.Networks, st.Attached, st.Endpoints, st.Peers)
		fmt.Fprintf(w, "changes waiting for etcd\t%d\n", st.Pending)
		fmt.Fprintf(w, "\nNODE (etcd)\tDATA\tCONTROL\tUP SINCE\n")
		for _, n := range st.Nodes {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", n.Name, n.DataAddr, n.ControlAddr, n.Started.Format(time.RFC3339))
		}
		fmt.Fprintf(w, "\nMEMBER (serf)\tADDRESS\tSTATE\n")
		for _, m := range st.Members {
			fmt.Fprintf(w, "%s\t%s\t%s\n", m.Name, m.Addr, m.Status)
		}
	case "peers":
		var rows []driver.PeerView
		if err := call(plugin.PeersPath, plugin.PeersRequest{Network: fs.Arg(0)}, &rows); err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(os.Stdout).Encode(rows)
		}
		fmt.Fprintf(w, "NETWORK\tENDPOINT\tIP\tMAC\tVTEP\tNODE\tPROGRAMMED\n")
		for _, r := range rows {
			prog := r.Programmed
			if r.Local {
				prog = "local"
			}
			fmt.Fprintf(w, "%.12s\t%.12s\t%s\t%s\t%s\t%s\t%s\n", r.Network, r.EID, r.IP, r.MAC, r.VTEP, r.Node, prog)
		}
	case "check":
		var problems []driver.Problem
		if err := call(plugin.CheckPath, nil, &problems); err != nil {
			return err
		}
		if *asJSON {
			json.NewEncoder(os.Stdout).Encode(problems)
		} else if len(problems) == 0 {
			fmt.Fprintln(w, "ok: the kernel holds exactly the peers etcd says")
		} else {
			fmt.Fprintf(w, "NETWORK\tPROBLEM\tENTRY\n")
			for _, p := range problems {
				fmt.Fprintf(w, "%.12s\t%s\t%s\n", p.Network, p.Kind, p.Peer)
			}
		}
		if len(problems) > 0 {
			return errProblems
		}
	}
	return nil
}

func callPlugin(socket, route string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	c := http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	r, err := c.Post("http://vxnet/"+route, "application/json", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("ask the plugin at %s (set --socket or VXNET_SOCKET): %w", socket, err)
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	if r.StatusCode != http.StatusOK {
		var e struct{ Err string }
		json.Unmarshal(b, &e)
		return errors.New(strings.TrimSpace(e.Err))
	}
	return json.Unmarshal(b, resp)
}
