# The plugin's rootfs, for users with a registry:
#   docker build -t vxnet-rootfs .
#   mkdir -p build/plugin/rootfs && docker export "$(docker create vxnet-rootfs)" | tar -x -C build/plugin/rootfs
#   cp config.json build/plugin/ && docker plugin create vxnet build/plugin
# Without a registry, `make plugin` builds the same directory from the
# static binary.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/vxnet ./cmd/vxnet \
 && mkdir -p /out/etc /out/run/docker/plugins /out/host/run /out/var/lib/vxnet /out/tmp \
 && touch /out/etc/hosts /out/etc/resolv.conf

FROM scratch
COPY --from=build /out/ /
ENTRYPOINT ["/vxnet", "plugin"]
