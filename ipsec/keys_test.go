package ipsec

import (
	"bytes"
	"crypto/ecdh"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func fixedKey(t *testing.T, seed byte) *ecdh.PrivateKey {
	t.Helper()
	k, err := ecdh.X25519().NewPrivateKey(bytes.Repeat([]byte{seed}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var (
	addrA = netip.MustParseAddr("192.0.2.11")
	addrB = netip.MustParseAddr("192.0.2.12")
)

// Both ends of a direction derive the same SA; the other direction, and
// other epochs, get other keys and SPIs.
func TestDeriveAgrees(t *testing.T) {
	a, b := fixedKey(t, 1), fixedKey(t, 2)
	sender, err := Derive(a, b.PublicKey().Bytes(), addrA, addrB, 7)
	if err != nil {
		t.Fatal(err)
	}
	receiver, err := Derive(b, a.PublicKey().Bytes(), addrA, addrB, 7)
	if err != nil {
		t.Fatal(err)
	}
	if sender.SPI != receiver.SPI || !bytes.Equal(sender.Key, receiver.Key) {
		t.Fatalf("ends disagree: sender %#x %x, receiver %#x %x", sender.SPI, sender.Key, receiver.SPI, receiver.Key)
	}
	if len(sender.Key) != 36 {
		t.Fatalf("got key of %d bytes; want 36 (AES-256 + salt)", len(sender.Key))
	}
	reverse, _ := Derive(a, b.PublicKey().Bytes(), addrB, addrA, 7)
	next, _ := Derive(a, b.PublicKey().Bytes(), addrA, addrB, 8)
	for name, other := range map[string]SA{"reverse direction": reverse, "next epoch": next} {
		if bytes.Equal(other.Key, sender.Key) || other.SPI == sender.SPI {
			t.Errorf("%s reuses the key or SPI", name)
		}
	}
	c := fixedKey(t, 3)
	third, _ := Derive(c, b.PublicKey().Bytes(), addrA, addrB, 7)
	if bytes.Equal(third.Key, sender.Key) {
		t.Error("a third host derived the pair's key")
	}
}

// The derivation is a wire format between hosts that may run different
// vxnet versions: this vector must never change.
func TestDeriveVector(t *testing.T) {
	sa, err := Derive(fixedKey(t, 1), fixedKey(t, 2).PublicKey().Bytes(), addrA, addrB, 1)
	if err != nil {
		t.Fatal(err)
	}
	got := hex.EncodeToString(sa.Key)
	const wantKey = "e9bae8886289ec99c21a3faff42baeaa7b27943d952f961ca604effdb087450f75f5949f"
	const wantSPI = 0xb7014679
	if got != wantKey || sa.SPI != wantSPI {
		t.Fatalf("got key %s spi %#x; want %s spi %#x", got, sa.SPI, wantKey, uint32(wantSPI))
	}
}

func TestDeriveRejectsBadPublicKey(t *testing.T) {
	if _, err := Derive(fixedKey(t, 1), []byte("short"), addrA, addrB, 1); err == nil {
		t.Fatal("got no error for a 5-byte public key")
	}
	if _, err := Derive(fixedKey(t, 1), make([]byte, 32), addrA, addrB, 1); err == nil {
		t.Fatal("got no error for the all-zero (low-order) public key")
	}
}

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "ipsec.key")
	k, err := LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("got mode %v; want 0600", st.Mode().Perm())
	}
	k.Epoch = 42
	if err := SaveKey(path, k); err != nil {
		t.Fatal(err)
	}
	again, err := LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Private.Equal(k.Private) || again.Epoch != 42 {
		t.Fatalf("reloaded key differs (epoch %d)", again.Epoch)
	}
	os.Chmod(path, 0o644)
	if err := SaveKey(path, k); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("after saving over a 0644 file: mode %v; want 0600", st.Mode().Perm())
	}
}

// A key file that cannot be used is an error naming the fix, and is left
// as it is: never replaced behind the operator's back.
func TestKeyFileBad(t *testing.T) {
	good, _ := json.Marshal(keyFile{Private: fixedKey(t, 1).Bytes(), Epoch: 9})
	for _, c := range []struct{ name, content, want string }{
		{"truncated", string(good[:20]), "is corrupt"},
		{"garbage", "\x00\xffgarbage", "is corrupt"},
		{"short key", `{"private_key":"AAAA","epoch":3}`, "holds no X25519 key"},
		{"epoch beyond the reqid", `{"private_key":"` + base64.StdEncoding.EncodeToString(fixedKey(t, 1).Bytes()) + `","epoch":18446744073709551615}`, "beyond the last one"},
	} {
		path := filepath.Join(t.TempDir(), "ipsec.key")
		os.WriteFile(path, []byte(c.content), 0o600)
		_, err := LoadKey(path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "remove "+path) {
			t.Errorf("%s: LoadKey: %v; want %q and the fix (remove %s)", c.name, err, c.want, path)
		}
		if b, _ := os.ReadFile(path); string(b) != c.content {
			t.Errorf("%s: LoadKey changed the file", c.name)
		}
	}
}

func TestCheckEpoch(t *testing.T) {
	for _, c := range []struct {
		epoch, known uint64
		ok           bool
	}{
		{1, 0, true},
		{5, 4, true},
		{3, 9, true}, // behind: not refused here; the rotation rules handle it
		{9 + MaxEpochLead, 9, true},
		{10 + MaxEpochLead, 9, false},
		{MaxEpoch, MaxEpoch - 1, true},
		{MaxEpoch + 1, MaxEpoch, false},
		{1<<64 - 1, MaxEpoch, false},
		{1<<64 - 1, 1<<64 - 2, false},
		{0, 0, false},
	} {
		if err := CheckEpoch(c.epoch, c.known); (err == nil) != c.ok {
			t.Errorf("CheckEpoch(%d, %d) = %v; want ok %v", c.epoch, c.known, err, c.ok)
		}
	}
}

func TestMaxMTU(t *testing.T) {
	v4, v6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	for _, c := range []struct {
		underlay int
		vtep     netip.Addr
		want     int
	}{
		{1500, v4, 1416}, {9000, v4, 8916}, {1450, v4, 1364}, {1501, v4, 1416}, {1503, v4, 1416}, {1504, v4, 1420},
		{1500, v6, 1396}, {9000, v6, 8896}, {1504, v6, 1400},
	} {
		if got := MaxMTU(c.underlay, c.vtep); got != c.want {
			t.Errorf("MaxMTU(%d, %s) = %d; want %d", c.underlay, c.vtep, got, c.want)
		}
		// The largest packet fits, one more byte does not: outer IP
		// header, ESP header, IV, ICV, then UDP+VXLAN+Ethernet (30), the
		// payload and the 2-byte trailer padded to 4.
		outer := 20
		if c.vtep.Is6() {
			outer = 40
		}
		size := func(l int) int { return outer + 8 + 8 + 16 + ((30 + l + 2 + 3) &^ 3) }
		if got := MaxMTU(c.underlay, c.vtep); size(got) > c.underlay || size(got+1) <= c.underlay {
			t.Errorf("MaxMTU(%d, %s) = %d: encrypted size %d, one byte more %d", c.underlay, c.vtep, got, size(got), size(got+1))
		}
	}
}
