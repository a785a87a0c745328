// Package retry is vxnet's one way of trying again: jittered exponential
// backoff (github.com/cenkalti/backoff) until success or the end of a
// context.
package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Policy is how long to wait between tries: First after the first
// failure, growing by Growth with Jitter either way, up to Max.
type Policy struct {
	First, Max time.Duration
}

const (
	// Growth multiplies the wait after each failure.
	Growth = 1.6
	// Jitter spreads waits by ±20% so nodes that failed together do not
	// retry together.
	Jitter = 0.2
)

// Until calls fn until it returns nil or ctx ends (then it returns ctx's
// cause). After each failure it calls notify, if not nil, with the error
// and the wait before the next try. An error wrapped by Fresh starts the
// waits over from First: the operation had worked for a while.
func Until(ctx context.Context, p Policy, fn func() error, notify func(err error, next time.Duration)) error {
	b := &backoff.ExponentialBackOff{InitialInterval: p.First, RandomizationFactor: Jitter, Multiplier: Growth, MaxInterval: p.Max}
	opts := []backoff.RetryOption{backoff.WithBackOff(b), backoff.WithMaxElapsedTime(0)}
	if notify != nil {
		opts = append(opts, backoff.WithNotify(notify))
	}
	_, err := backoff.Retry(ctx, func() (struct{}, error) { return struct{}{}, fn() }, opts...)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

// Fresh marks the failure of an operation that had succeeded for a while
// (a watch that ran, a lease that was kept): the next try comes after
// only p.First.
func Fresh(err error, p Policy) error {
	return &freshError{err: err, restart: &backoff.RetryAfterError{Duration: p.First}}
}

// freshError reads as its error; to the backoff it is a RetryAfterError,
// which starts the waits over.
type freshError struct {
	err     error
	restart *backoff.RetryAfterError
}

func (e *freshError) Error() string   { return e.err.Error() }
func (e *freshError) Unwrap() []error { return []error{e.err, e.restart} }
