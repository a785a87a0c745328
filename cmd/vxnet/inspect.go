package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
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
		fmt.Fprintf(w, "node\t%s\nschema\t%s\nvtep\t%s\nscope\t%s\netcd\t%s\npeer table loaded\t%v\n", st.Node, st.Schema, st.VTEP, st.Scope, st.Etcd, st.Synced)
		fmt.Fprintf(w, "networks\t%d (%d with endpoints here)\nlocal endpoints\t%d\nendpoints held\t%d (of the %d networks used here)\n", st.Networks, st.Attached, st.Endpoints, st.Peers, st.Watched)
		fmt.Fprintf(w, "changes waiting for etcd\t%d\n", st.Pending)
		if e := st.Encryption; e != nil {
			fmt.Fprintf(w, "key epoch\t%d (%d encrypted networks here, keys of %d nodes, SAs %d in / %d out)\n", e.Epoch, e.Active, e.Peers, e.Inbound, e.Outbound)
		}
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
		fmt.Fprintf(w, "NETWORK\tENDPOINT\tIP\tIPV6\tMAC\tVTEP\tNODE\tPROGRAMMED\n")
		for _, r := range rows {
			prog := r.Programmed
			if r.Local {
				prog = "local"
			}
			ip6 := r.IP6
			if ip6 == "" {
				ip6 = "-"
			}
			fmt.Fprintf(w, "%.12s\t%.12s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Network, r.EID, r.IP, ip6, r.MAC, r.VTEP, r.Node, prog)
		}
	case "rotate":
		var r plugin.RotateResponse
		if err := call(plugin.RotatePath, nil, &r); err != nil {
			return err
		}
		fmt.Fprintf(w, "key epoch %d started; every node follows it\n", r.Epoch)
	case "check":
		var problems []driver.Problem
		if err := call(plugin.CheckPath, nil, &problems); err != nil {
			return err
		}
		if *asJSON {
			json.NewEncoder(os.Stdout).Encode(problems)
		} else if len(problems) == 0 {
			fmt.Fprintln(w, "ok: the kernel holds exactly the peers the table says (etcd's, and gossip's not yet in etcd); no conflicts")
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
	if err := plugin.Call(socket, route, req, resp); err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			return fmt.Errorf("ask the plugin (set --socket or VXNET_SOCKET): %w", err)
		}
		return err
	}
	return nil
}
