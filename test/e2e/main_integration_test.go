//go:build integration

package e2e_test

import (
	"context"
	"os"
	"testing"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

var (
	bed     *testbed.Bed
	product *testbed.Product
)

func TestMain(m *testing.M) {
	os.Exit(testbed.MainWith(m, &bed, testbed.Options{Node: true}, func(ctx context.Context, b *testbed.Bed) error {
		var err error
		product, err = b.InstallExample(ctx)
		return err
	}))
}
