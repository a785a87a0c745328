package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/config"
	"github.com/vxnet/vxnet/ipsec"
	"github.com/vxnet/vxnet/peerdb"
	"github.com/vxnet/vxnet/vxlan"
)

// stateFiles are the files vxnet keeps in VXNET_STATE_DIR (runNode names
// them): all uninstall removes there. leaseFile is read first, to revoke
// the node's etcd lease.
var stateFiles = []string{"state.json", "ipam.json", "ipsec.key", leaseFile}

const leaseFile = "lease"

// uninstallTimeout bounds the etcd part of `vxnet uninstall`.
const uninstallTimeout = 30 * time.Second

// uninstall runs `vxnet uninstall [flags]` with the settings of `vxnet
// plugin` (environment or flags): it removes what vxnet left on this host
// and in etcd once its plugin has stopped, and prints each thing removed.
//
// In order: the pinned namespaces with their VXLAN devices (and any
// vxnVNI device left in the host namespace), vxnet's xfrm policies and SAs
// and its nftables table, then this node's records in etcd (its lease,
// records, address claims, and its place among the users of networks and
// pools), then the state directory, whose lease file the etcd step reads:
// if etcd does not answer, the directory stays so that a second run can
// finish. It refuses to run while a plugin answers on the socket, or on a
// managed plugin's socket beside it.
func uninstall(args []string) error {
	s, err := config.Load("vxnet uninstall", args, os.Getenv)
	if err != nil {
		return err
	}
	stale, err := refuseIfServing(s.Socket)
	if err != nil {
		return err
	}
	out := os.Stdout
	var errs []error
	did := 0
	say := func(format string, a ...any) { did++; fmt.Fprintf(out, format+"\n", a...) }

	dp, err := vxlan.RemoveAll(s.NetnsDir)
	errs = append(errs, err)
	for _, nid := range dp.Networks {
		say("removed namespace %s (network %.12s) and its devices", filepath.Join(s.NetnsDir, nid), nid)
	}
	for _, l := range dp.Links {
		say("removed device %s (host namespace)", l)
	}
	for _, d := range dp.Dirs {
		say("removed directory %s", d)
	}

	sec, err := ipsec.RemoveAll()
	errs = append(errs, err)
	if sec.Policies+sec.SAs > 0 {
		say("removed %d xfrm policies and %d SAs", sec.Policies, sec.SAs)
	}
	if sec.Table {
		say("removed nftables table inet %s", ipsec.TableName)
	}

	f, etcdErr := forgetNode(s)
	if f.Lease != 0 {
		say("revoked etcd lease %x: node %s's node and key records, endpoints and containers' addresses", f.Lease, s.NodeName)
	}
	for _, k := range f.Records {
		say("deleted etcd key %s", k)
	}
	for _, nid := range f.Networks {
		if slices.Contains(f.Freed, nid) {
			say("left network %s in etcd, and freed it (the last host to use it)", nid)
		} else {
			say("left network %s in etcd (other hosts use it)", nid)
		}
	}
	for _, p := range f.Pools {
		say("released address pool %s in etcd", p)
	}
	if etcdErr != nil {
		errs = append(errs, fmt.Errorf("etcd: %w; %s is kept for a second run", etcdErr, s.StateDir))
	} else {
		removed, left, err := removeStateDir(s.StateDir)
		errs = append(errs, err)
		for _, p := range removed {
			say("removed %s", p)
		}
		if len(left) > 0 {
			fmt.Fprintf(out, "kept %s: it holds files that are not vxnet's: %s\n", s.StateDir, strings.Join(left, ", "))
		}
	}
	if stale != "" {
		if err := os.Remove(stale); err == nil {
			say("removed stale socket %s", stale)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if did == 0 {
		fmt.Fprintln(out, "nothing of vxnet was left on this host")
	} else {
		fmt.Fprintln(out, "nothing of vxnet is left on this host")
	}
	return nil
}

// refuseIfServing fails if a plugin answers on socket, or on a managed
// plugin's socket of the same name one directory down (Docker's
// /run/docker/plugins/ID/vxnet.sock). It returns socket if it is a file
// nobody answers on: a killed plugin's, to remove.
func refuseIfServing(socket string) (stale string, err error) {
	managed, _ := filepath.Glob(filepath.Join(filepath.Dir(socket), "*", filepath.Base(socket)))
	for _, p := range append([]string{socket}, managed...) {
		c, err := net.DialTimeout("unix", p, 2*time.Second)
		if err == nil {
			c.Close()
			return "", fmt.Errorf("a vxnet plugin is serving on %s: remove every vxnet network and stop the plugin first "+
				"(docker plugin disable vxnet:latest && docker plugin rm vxnet:latest, or stop `vxnet plugin`), then run uninstall again", p)
		}
		if p == socket && errors.Is(err, syscall.ECONNREFUSED) {
			stale = p
		}
	}
	return stale, nil
}

// forgetNode removes this node from etcd (peerdb.Store.ForgetNode) with
// the plugin's etcd settings, but no lease of its own.
func forgetNode(s config.Settings) (peerdb.Forgotten, error) {
	log := logrus.New()
	log.SetOutput(io.Discard) // connection retries; the error says what failed
	store, err := peerdb.Open(etcdConfig(s), logrus.NewEntry(log))
	if err != nil {
		return peerdb.Forgotten{}, err
	}
	defer store.Close()
	ctx, cancel := context.WithTimeout(context.Background(), uninstallTimeout)
	defer cancel()
	return store.ForgetNode(ctx, s.NodeName, filepath.Join(s.StateDir, leaseFile))
}

// removeStateDir removes vxnet's files from dir (and their temporary
// copies of an interrupted write), then dir if nothing else is in it. It
// returns what it removed and the names it left.
func removeStateDir(dir string) (removed, left []string, err error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		if !isStateFile(e.Name()) || e.IsDir() {
			left = append(left, e.Name())
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	if len(left) == 0 && len(errs) == 0 {
		if err := os.Remove(dir); err != nil {
			errs = append(errs, err)
		} else {
			removed = append(removed, dir)
		}
	}
	return removed, left, errors.Join(errs...)
}

// isStateFile says whether name is one of stateFiles or the temporary file
// of an atomic write of one (internal/statefile: ".NAME" and digits).
func isStateFile(name string) bool {
	for _, f := range stateFiles {
		if name == f {
			return true
		}
		if rest, ok := strings.CutPrefix(name, "."+f); ok && rest != "" && strings.Trim(rest, "0123456789") == "" {
			return true
		}
	}
	return false
}
