package ipsec

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/vxnet/vxnet/internal/statefile"
	"github.com/vxnet/vxnet/vxlan"
)

// Algorithm is the AEAD of every SA: AES-256 in GCM as ESP uses it (RFC
// 4106), with a 128-bit ICV.
const (
	Algorithm = "rfc4106(gcm(aes))"
	keyLen    = 32 + 4 // AES-256 key, then the 4-byte nonce salt
	ICVBits   = 128
)

// Epochs are numbered from 1. The kernel keeps the low EpochBits of an
// SA's epoch in its reqid (xfrm_linux.go), which is how a restarted node
// learns the epochs of the SAs it finds: epochs therefore never go beyond
// MaxEpoch, so that number is the whole epoch and two epochs never share
// one. A host at MaxEpoch refuses to rotate (ErrLastEpoch) rather than wrap
// to an epoch it used before. At one rotation every 12 hours (the default)
// that is 23,000 years; at the 1 s minimum, 194 days.
//
// A peer's epoch is followed only if it is at most MaxEpochLead above the
// highest epoch this host knows (CheckEpoch): every honest host moves one
// epoch past the highest it sees, so epochs advance by about one per
// rotation period, and a record far ahead is a broken or hostile one that
// would otherwise use up the epochs in a few steps.
const (
	EpochBits           = 24
	MaxEpoch     uint64 = 1<<EpochBits - 1
	MaxEpochLead uint64 = 1 << 16
)

// ErrLastEpoch says a host reached MaxEpoch and cannot start another.
var ErrLastEpoch = fmt.Errorf("key epoch %d is the last one the kernel's SA reqid can hold: no further rotation; the current keys stay in use", MaxEpoch)

// CheckEpoch returns an error unless a host that knows epochs up to known
// may follow epoch: not 0 (never published), not beyond MaxEpoch, and at
// most MaxEpochLead above known.
func CheckEpoch(epoch, known uint64) error {
	switch {
	case epoch == 0:
		return errors.New("epoch 0 is never published")
	case epoch > MaxEpoch:
		return fmt.Errorf("epoch %d is beyond the last one, %d (the kernel's SA reqid holds %d bits)", epoch, MaxEpoch, EpochBits)
	case epoch > known && epoch-known > MaxEpochLead:
		return fmt.Errorf("epoch %d is more than %d ahead of %d, the highest this host knows", epoch, MaxEpochLead, known)
	}
	return nil
}

// NodeKey is a host's key pair and the highest epoch it has used, as kept
// in its key file.
type NodeKey struct {
	Private *ecdh.PrivateKey
	// Epoch is the highest epoch this host has installed SAs for, in this
	// or an earlier run. Epochs only grow.
	Epoch uint64
}

type keyFile struct {
	Private []byte `json:"private_key"`
	Epoch   uint64 `json:"epoch"`
}

// LoadKey reads the key file at path, or creates one with a new key pair
// if there is none. The file is 0600: the private key never leaves it.
//
// A file that cannot be used (corrupt, no X25519 key, an epoch beyond
// MaxEpoch) is an error naming the fix, removing it; it is never replaced
// silently: the file may only be unreadable for now, and the operator
// should know the host's key changed. Removing it is safe. A new key pair
// gives every pair of hosts new shared secrets, so no SA of the new key
// equals one of the old, whatever the epochs; and the new key's epoch
// still starts above every epoch in etcd (this host's last published
// record included), so peers' checks against epochs they used before hold
// as for any restart.
func LoadKey(path string) (NodeKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		priv, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			return NodeKey{}, fmt.Errorf("generate node key: %w", err)
		}
		k := NodeKey{Private: priv}
		return k, SaveKey(path, k)
	}
	if err != nil {
		return NodeKey{}, fmt.Errorf("read node key: %w", err)
	}
	fix := "remove " + path + " and restart the plugin to make a new key pair"
	var f keyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return NodeKey{}, fmt.Errorf("node key file %s is corrupt (%s): %w", path, fix, err)
	}
	priv, err := ecdh.X25519().NewPrivateKey(f.Private)
	if err != nil {
		return NodeKey{}, fmt.Errorf("node key file %s holds no X25519 key (%s): %w", path, fix, err)
	}
	if f.Epoch > MaxEpoch {
		return NodeKey{}, fmt.Errorf("node key file %s holds epoch %d, beyond the last one, %d (%s)", path, f.Epoch, MaxEpoch, fix)
	}
	return NodeKey{Private: priv, Epoch: f.Epoch}, nil
}

// SaveKey writes k to path atomically and durably, mode 0600.
func SaveKey(path string, k NodeKey) error {
	if err := statefile.Write(path, keyFile{Private: k.Private.Bytes(), Epoch: k.Epoch}); err != nil {
		return fmt.Errorf("save node key: %w", err)
	}
	return nil
}

// SA is what both ends of one direction need: the SPI and the AEAD key.
type SA struct {
	Src, Dst netip.Addr
	Epoch    uint64
	SPI      uint32
	Key      []byte // keyLen bytes
}

// Installed is an SA of vxnet's found in the kernel.
type Installed struct {
	Src, Dst netip.Addr
	SPI      uint32
	Epoch    uint32 // the epoch, read from the reqid's EpochBits
}

// Derive computes the SA for packets from src to dst in epoch from this
// host's private key and the other host's public key. Both hosts get the
// same SA: the sender with (its key, receiver's public key), the receiver
// with (its key, sender's public key). The derivation is a wire format:
// hosts running different vxnet versions must agree on it, so it is pinned
// by a test vector.
func Derive(priv *ecdh.PrivateKey, peerPublic []byte, src, dst netip.Addr, epoch uint64) (SA, error) {
	pub, err := ecdh.X25519().NewPublicKey(peerPublic)
	if err != nil {
		return SA{}, fmt.Errorf("SA %s->%s: peer public key: %w", src, dst, err)
	}
	shared, err := priv.ECDH(pub)
	if err != nil {
		return SA{}, fmt.Errorf("SA %s->%s: key agreement: %w", src, dst, err)
	}
	info := make([]byte, 0, 64)
	info = append(info, "vxnet esp v1"...)
	s, d := src.As16(), dst.As16()
	info = append(info, s[:]...)
	info = append(info, d[:]...)
	info = binary.BigEndian.AppendUint64(info, epoch)
	out, err := hkdf.Key(sha256.New, shared, nil, string(info), keyLen+4)
	if err != nil {
		return SA{}, err
	}
	spi := binary.BigEndian.Uint32(out[keyLen:])
	if spi < 256 { // 1-255 are reserved (RFC 4303)
		spi += 256
	}
	return SA{Src: src, Dst: dst, Epoch: epoch, SPI: spi, Key: out[:keyLen]}, nil
}

// Overhead of ESP on a VXLAN packet in transport mode, in bytes: the ESP
// header (SPI, sequence number), the 8-byte IV, the 16-byte ICV, and a
// trailer of 2 bytes plus padding to a multiple of 4.
const (
	espHeader  = 8
	espIV      = 8
	espICV     = ICVBits / 8
	espTrailer = 2
	ipv4Header = 20
	ipv6Header = 40
)

// MaxMTU is the largest overlay MTU whose packets, VXLAN-encapsulated and
// then ESP-protected, fit an underlay MTU of underlay with VTEPs like vtep:
// 1416 for 1500 on IPv4 (plain VXLAN: 1450), 1396 on IPv6 (plain: 1430).
// The protected part — UDP header onwards plus the 2-byte trailer — is
// padded to 4 bytes, so the result is the largest that needs no padding.
func MaxMTU(underlay int, vtep netip.Addr) int {
	outer := ipv4Header
	if vtep.Is6() && !vtep.Is4In6() {
		outer = ipv6Header
	}
	room := underlay - outer - espHeader - espIV - espICV // for the padded part
	room &^= 3
	return room - espTrailer - (vxlan.OverheadFor(vtep) - outer) // the overhead counts the outer IP header
}
