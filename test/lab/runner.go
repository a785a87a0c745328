package lab

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Runner lets a program (the demo, the benchmark) use the lab: it collects
// cleanups and runs them in reverse on exit, on a fatal error, or on
// SIGINT/SIGTERM.
type Runner struct {
	cleanups []func()
	failed   bool
}

// NewRunner returns a Runner that also cleans up when interrupted.
func NewRunner() *Runner {
	r := &Runner{}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; r.Logf("interrupted; cleaning up"); r.Exit(1) }()
	return r
}

func (r *Runner) Helper()                         {}
func (r *Runner) Failed() bool                    { return r.failed }
func (r *Runner) Cleanup(fn func())               { r.cleanups = append(r.cleanups, fn) }
func (r *Runner) Logf(format string, args ...any) { fmt.Printf(format+"\n", args...) }

// Fatalf reports the error, cleans up and exits 1.
func (r *Runner) Fatalf(format string, args ...any) {
	r.failed = true
	r.Logf("FAILED: "+format, args...)
	r.Exit(1)
}

// Exit runs the cleanups, last first, and exits with code.
func (r *Runner) Exit(code int) {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	os.Exit(code)
}
