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
func Main(m *testing.M, bed **Bed) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	start := time.Now()
	b, err := Start(ctx, Options{})
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "test bed: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "test bed up in %s (dir %s)\n", time.Since(start).Round(time.Millisecond), b.Dir)
	*bed = b
	code := m.Run()
	if code != 0 {
		b.DumpLogs(os.Stderr)
	}
	b.Stop()
	return code
}
