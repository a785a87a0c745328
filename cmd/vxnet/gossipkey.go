package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vxnet/vxnet/config"
	"github.com/vxnet/vxnet/peerdb"
)

// rotateTimeout bounds a whole gossip key rotation: its three steps and
// the etcd calls between them.
const rotateTimeout = time.Minute

// rotateGossipKey replaces the cluster's gossip key (the keyring vxnet
// keeps in etcd) with a new one; every plugin follows without losing a
// gossip message. It takes the plugin's etcd settings.
func rotateGossipKey(args []string) error {
	s, err := config.Load("vxnet rotate-gossip-key", args, os.Getenv)
	if err != nil {
		return err
	}
	if s.GossipKey != nil {
		return errors.New("VXNET_GOSSIP_KEY is set: this cluster's gossip key is set by hand, not kept in etcd; rotate it by setting a new key on every host (docker plugin set), one host at a time")
	}
	log := logrus.New()
	log.SetOutput(os.Stderr)
	log.SetLevel(logrus.WarnLevel)
	store, err := peerdb.Open(etcdConfig(s), logrus.NewEntry(log))
	if err != nil {
		return err
	}
	defer store.Close()
	ctx, cancel := context.WithTimeout(context.Background(), rotateTimeout)
	defer cancel()
	if err := store.RotateGossipKey(ctx); err != nil {
		return err
	}
	fmt.Println("gossip key rotated: every plugin now sends with the new key; the old one is gone")
	return nil
}
