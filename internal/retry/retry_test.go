package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestUntilRetriesThenSucceeds(t *testing.T) {
	var waits []time.Duration
	tries := 0
	err := Until(context.Background(), Policy{First: time.Millisecond, Max: 4 * time.Millisecond}, func() error {
		tries++
		if tries < 5 {
			return errors.New("not yet")
		}
		return nil
	}, func(_ error, next time.Duration) { waits = append(waits, next) })
	if err != nil || tries != 5 {
		t.Fatalf("Until = %v after %d tries; want nil after 5", err, tries)
	}
	for i, w := range waits {
		if w > time.Duration(float64(4*time.Millisecond)*(1+Jitter))+time.Microsecond {
			t.Errorf("wait %d = %v; want at most Max with jitter", i, w)
		}
	}
}

func TestUntilEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := Until(ctx, Policy{First: time.Millisecond, Max: time.Millisecond}, func() error { return errors.New("never") }, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Until = %v; want the context's end", err)
	}
}

func TestFreshStartsTheWaitsOver(t *testing.T) {
	var waits []time.Duration
	tries := 0
	p := Policy{First: time.Millisecond, Max: time.Second}
	Until(context.Background(), p, func() error {
		tries++
		switch {
		case tries == 6:
			return Fresh(errors.New("ran a while, then failed"), p)
		case tries < 8:
			return errors.New("failed")
		}
		return nil
	}, func(err error, next time.Duration) { waits = append(waits, next) })
	if len(waits) != 7 {
		t.Fatalf("%d waits; want 7", len(waits))
	}
	if waits[5] != time.Millisecond || waits[4] <= 2*time.Millisecond {
		t.Errorf("waits = %v; want growth, then First after the fresh failure", waits)
	}
}
