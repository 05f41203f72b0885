// Package run runs the long-lived parts of a binary under one rule: a group
// of named goroutines that all stop when one fails or the context ends, and
// HTTP servers that bind when they are set up (a port in use fails the
// start) and shut down gracefully with the group.
package run

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// shutdownGrace bounds how long an HTTP server waits for requests in flight.
const shutdownGrace = 5 * time.Second

// Group runs named goroutines that all stop when one of them fails, returns
// before its context is done, or the parent context ends.
type Group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	err    error
}

// NewGroup returns a Group under ctx.
func NewGroup(ctx context.Context) *Group {
	ctx, cancel := context.WithCancel(ctx)
	return &Group{ctx: ctx, cancel: cancel}
}

// Go runs fn in the group. fn must return once its context is done; a nil
// return before that counts as a failure ("stopped unexpectedly").
func (g *Group) Go(name string, fn func(context.Context) error) {
	g.wg.Go(func() {
		err := fn(g.ctx)
		if err == nil && g.ctx.Err() == nil {
			err = errors.New("stopped unexpectedly")
		}
		if err != nil {
			g.once.Do(func() { g.err = fmt.Errorf("%s: %w", name, err) })
		}
		g.cancel()
	})
}

// Wait waits for every goroutine and returns the first failure, if any.
func (g *Group) Wait() error {
	g.wg.Wait()
	g.cancel()
	return g.err
}

// HTTP binds addr now and returns the server's loop for a Group: it serves h
// until its context is done, then shuts down within a grace period. An
// empty addr means the server is off: the loop only waits.
func HTTP(ctx context.Context, name, addr string, h http.Handler) (func(context.Context) error, error) {
	if addr == "" {
		return func(ctx context.Context) error { <-ctx.Done(); return nil }, nil
	}
	lis, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s server: %w", name, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	return func(ctx context.Context) error {
		klog.FromContext(ctx).Info("Serving", "server", name, "address", lis.Addr().String())
		shutDown := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			defer close(shutDown)
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
			defer cancel()
			_ = srv.Shutdown(sctx)
		})
		err := srv.Serve(lis)
		if stop() {
			// Serve failed on its own: nothing asked it to stop.
			_ = srv.Close()
			return fmt.Errorf("serve %s: %w", lis.Addr(), err)
		}
		<-shutDown // Serve returns as Shutdown starts: wait for requests in flight
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve %s: %w", lis.Addr(), err)
		}
		return nil
	}, nil
}
