package testbed

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// Main is a TestMain body for a package of integration tests: it starts one
// bed for the whole package (into *bed), runs the tests, prints every
// process's log when a test failed, and stops the bed.
func Main(m *testing.M, bed **Bed) int { return MainWith(m, bed, Options{}, nil) }

// MainWith is Main with bed options and a setup step (say, installing the
// product) run once the bed is up, before the tests.
func MainWith(m *testing.M, bed **Bed, opts Options, setup func(context.Context, *Bed) error) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	start := time.Now()
	b, err := Start(ctx, opts)
	if err != nil {
		cancel()
		fmt.Fprintf(os.Stderr, "test bed: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "test bed up in %s (dir %s)\n", time.Since(start).Round(time.Millisecond), b.Dir)
	if setup != nil {
		start = time.Now()
		if err := setup(ctx, b); err != nil {
			cancel()
			fmt.Fprintf(os.Stderr, "test bed setup: %v\n", err)
			b.DumpLogs(os.Stderr)
			b.Stop()
			return 1
		}
		fmt.Fprintf(os.Stderr, "test bed setup done in %s\n", time.Since(start).Round(time.Millisecond))
	}
	cancel()
	*bed = b
	code := m.Run()
	if code != 0 {
		b.DumpLogs(os.Stderr)
	}
	b.Stop()
	return code
}
