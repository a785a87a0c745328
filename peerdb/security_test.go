package peerdb

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/internal/etcdtest"
)

func node() Node {
	return Node{Name: "h1", DataAddr: netip.MustParseAddr("192.0.2.11"), ControlAddr: netip.MustParseAddr("192.0.2.11")}
}

func shortCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	t.Cleanup(cancel)
	return c
}

func openCfg(t *testing.T, cfg Config) *Store {
	t.Helper()
	s, err := Open(cfg, logrus.NewEntry(logrus.StandardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestTLSWithClientCertificates(t *testing.T) {
	e, f := etcdtest.StartTLS(t)
	good := openCfg(t, Config{Endpoints: []string{e.Endpoint}, Prefix: "/vxnet", CAFile: f.CA, CertFile: f.ClientCert, KeyFile: f.ClientKey})
	if err := good.PutNode(ctx(t), node()); err != nil {
		t.Fatalf("with CA and client certificate: %v", err)
	}
	noCert := openCfg(t, Config{Endpoints: []string{e.Endpoint}, Prefix: "/vxnet", CAFile: f.CA})
	if err := noCert.PutNode(shortCtx(t), node()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("without a client certificate: %v; want ErrUnavailable", err)
	}
	if _, err := Open(Config{Endpoints: []string{e.Endpoint}, CAFile: "/nonexistent/ca.pem"}, nil); err == nil {
		t.Fatal("a missing CA file was accepted")
	}
}

func TestUsernameAndPassword(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	c := ctx(t)
	if _, err := cli.UserAdd(c, "root", "s3cret"); err != nil {
		t.Fatal(err)
	}
	cli.RoleAdd(c, "root")
	if _, err := cli.UserGrantRole(c, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AuthEnable(c); err != nil {
		t.Fatal(err)
	}
	good := openCfg(t, Config{Endpoints: []string{e.Endpoint}, Prefix: "/vxnet", Username: "root", Password: "s3cret"})
	if err := good.PutNode(ctx(t), node()); err != nil {
		t.Fatalf("with user and password: %v", err)
	}
	anon := openCfg(t, Config{Endpoints: []string{e.Endpoint}, Prefix: "/vxnet"})
	if err := anon.PutNode(shortCtx(t), node()); err == nil {
		t.Fatal("an anonymous write succeeded on an etcd with auth on")
	}
}

func TestWrongPasswordSaysWhy(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	c := ctx(t)
	cli.UserAdd(c, "root", "s3cret")
	cli.RoleAdd(c, "root")
	cli.UserGrantRole(c, "root", "root")
	if _, err := cli.AuthEnable(c); err != nil {
		t.Fatal(err)
	}
	bad := openCfg(t, Config{Endpoints: []string{e.Endpoint}, Prefix: "/vxnet", Username: "root", Password: "wrong"})
	err := bad.PutNode(shortCtx(t), node())
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("wrong password: %v; want ErrUnavailable saying authentication failed", err)
	}
}
