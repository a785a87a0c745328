# vxnet build, test and lab targets. The lab and most tests need root.
export PATH := $(PATH):/usr/local/go/bin
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BIN     := bin/vxnet
PLUGIN  := build/plugin
NAME    ?= vxnet
TAG     ?= latest
# SCHEMA builds a plugin that writes another schema version (MAJOR.MINOR,
# peerdb/schema.go): the upgrade tests' second build.
SCHEMA  ?=
LDFLAGS := -s -w -X main.version=$(VERSION)$(if $(SCHEMA), -X github.com/vxnet/vxnet/peerdb.schema=$(SCHEMA))

.PHONY: all build test test-unit demo bench bench-encrypted scale setup plugin plugin-create clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/vxnet

# Debian packages the tests and the lab use.
setup:
	./scripts/setup

# Every test: unit tests and the multi-host lab (root).
test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m ./...

# Tests that need neither root nor etcd.
test-unit:
	$(GO) test -count=1 ./config ./driver ./plugin ./ipsec ./monitoring ./svclb

# Three dockerd hosts in a swarm, vxnet installed from a lab registry.
demo: plugin
	$(GO) run ./test/demo -bin $(BIN) -plugin $(PLUGIN)

# vxnet against the stock overlay and the underlay on the Docker lab
# (results: BENCHMARKS.md).
bench: plugin
	$(GO) run ./test/bench -bin $(BIN) -plugin $(PLUGIN)

# Encrypted networks (vxnet, stock) and vxnet plain, inside Debian's
# kernel under qemu: this kernel has no ESP. Emulated; about 8 minutes.
bench-encrypted: plugin
	$(GO) run ./test/bench -qemu -bin $(BIN) -plugin $(PLUGIN)

# The managed plugin's directory: config.json and a rootfs holding only
# the static binary. No image is pulled; `make plugin-create` installs it
# as $(NAME):$(TAG) on this Docker.
plugin: build
	rm -rf $(PLUGIN)
	mkdir -p $(PLUGIN)/rootfs/etc $(PLUGIN)/rootfs/run/docker/plugins $(PLUGIN)/rootfs/host/run $(PLUGIN)/rootfs/var/lib/vxnet $(PLUGIN)/rootfs/proc $(PLUGIN)/rootfs/sys $(PLUGIN)/rootfs/dev $(PLUGIN)/rootfs/tmp
	touch $(PLUGIN)/rootfs/etc/hosts $(PLUGIN)/rootfs/etc/resolv.conf
	cp $(BIN) $(PLUGIN)/rootfs/vxnet
	cp config.json $(PLUGIN)/config.json

plugin-create: plugin
	docker plugin create $(NAME):$(TAG) $(PLUGIN)

clean:
	rm -rf bin build vxnet *.test

# The control plane at large-cluster scale: 10,000 simulated hosts, 1,000,000
# endpoints over 10,000 networks, churn, etcd's figures, a real plugin's cold
# sync and memory (about 3 minutes; results and a quick run: BENCHMARKS.md).
# SCALE_FLAGS adds flags, e.g. -before-bin for the whole-prefix design.
SCALE_FLAGS ?=
scale: build
	$(GO) run ./test/scale -bin $(BIN) $(SCALE_FLAGS)
