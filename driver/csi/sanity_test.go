package csi

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"

	"github.com/svid-csi/svid-csi/driver/manager/managertest"
)

// sanitySkips are the csi-test specs that cannot apply to a node-only,
// ephemeral-only driver. The controller suites assume a controller service
// (csi-test sends them to the same socket; there is none). The three node
// specs named below each create their volume with the controller's
// CreateVolume and publish it read-write, which this driver refuses (readonly
// must be true). Every other spec that csi-test does not skip on its own runs.
var sanitySkips = []string{
	"[Controller Server]",
	"[GroupController Server]",
	"should remove target path",
	"should fail when volume does not exist on the specified path",
	"should return health for a valid volume",
}

func TestSanity(t *testing.T) {
	td := startDriver(t, testLogger(t))
	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + filepath.Join(td.dir, "csi.sock")
	// Where the kubelet puts a CSI volume's target (csi-test adds "/target").
	cfg.TargetPath = filepath.Dir(managertest.Target(td.dir, "sanity"))
	if err := os.MkdirAll(filepath.Dir(cfg.TargetPath), 0o750); err != nil {
		t.Fatal(err)
	}
	cfg.StagingPath = filepath.Join(td.dir, "sanity-staging")
	cfg.IdempotentCount = 0
	// What the kubelet sends to an ephemeral volume, for specs that use
	// volume parameters.
	cfg.TestVolumeParameters = map[string]string{
		keyPodName: "sanity", keyPodNamespace: "sanity", keyPodUID: "uid-sanity",
		keyServiceAccount: "default", keyEphemeral: "true", keyTokens: tokensJSON("sanity-token"),
	}
	sc := sanity.GinkgoTest(&cfg)
	defer sc.Finalize()
	gomega.RegisterFailHandler(ginkgo.Fail)
	suite, reporter := ginkgo.GinkgoConfiguration()
	for _, s := range sanitySkips {
		suite.SkipStrings = append(suite.SkipStrings, regexp.QuoteMeta(s))
	}
	ginkgo.RunSpecs(t, "CSI sanity (node-only, ephemeral)", suite, reporter)
}
