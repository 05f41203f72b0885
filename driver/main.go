// Command svid-csi-driver is the node plugin: it gives each pod a SPIFFE
// X.509 SVID issued through cert-manager, in a tmpfs volume, renewed
// automatically.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/app"
)

// version is set at build time: -ldflags "-X main.version=...".
var version = "dev"

func main() {
	cfg := app.Defaults()
	cfg.Version = version
	flag.StringVar(&cfg.DriverName, "driver-name", cfg.DriverName, "CSI driver name; must equal the CSIDriver object's name")
	flag.StringVar(&cfg.NodeID, "node-id", "", "name of this node (required)")
	flag.StringVar(&cfg.Endpoint, "endpoint", "", "CSI socket, unix:///path (default <kubelet-root-dir>/plugins/<driver-name>/csi.sock)")
	flag.StringVar(&cfg.DataRoot, "data-root", cfg.DataRoot, "directory on a host tmpfs for volume state; must survive driver restarts (mountPropagation: Bidirectional)")
	flag.StringVar(&cfg.KubeletRootDir, "kubelet-root-dir", cfg.KubeletRootDir, "kubelet root directory, for plugin registration")
	flag.StringVar(&cfg.TrustDomain, "trust-domain", cfg.TrustDomain, "SPIFFE trust domain")
	flag.DurationVar(&cfg.CertificateRequestDuration, "certificate-request-duration", cfg.CertificateRequestDuration, "requested certificate lifetime")
	flag.StringVar(&cfg.IssuerName, "issuer-name", "", "cert-manager issuer name (or use --runtime-issuance-configmap)")
	flag.StringVar(&cfg.IssuerKind, "issuer-kind", cfg.IssuerKind, "cert-manager issuer kind")
	flag.StringVar(&cfg.IssuerGroup, "issuer-group", cfg.IssuerGroup, "cert-manager issuer group")
	flag.StringVar(&cfg.RuntimeIssuanceConfigMap, "runtime-issuance-configmap", "", "<namespace>/<name> of a ConfigMap naming the issuer at run time")
	flag.StringVar(&cfg.ConfigConfigMap, "config-configmap", "", "<namespace>/<name> of the shared configuration ConfigMap whose TRUST_DOMAIN, CERTIFICATE_REQUEST_DURATION and ISSUER_NAME/_KIND/_GROUP replace the flags of the same meaning while valid, read live")
	flag.StringVar(&cfg.SourceCABundle, "source-ca-bundle", "", "PEM CA bundle file written into every volume as --file-name-ca")
	flag.StringVar(&cfg.FileNameCertificate, "file-name-certificate", cfg.FileNameCertificate, "certificate chain file name in the volume")
	flag.StringVar(&cfg.FileNameKey, "file-name-key", cfg.FileNameKey, "private key file name in the volume")
	flag.StringVar(&cfg.FileNameCA, "file-name-ca", cfg.FileNameCA, "CA bundle file name in the volume")
	flag.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	flag.Float64Var(&cfg.KubeAPIQPS, "kube-api-qps", cfg.KubeAPIQPS, "client-side QPS limit towards the API server")
	flag.IntVar(&cfg.KubeAPIBurst, "kube-api-burst", cfg.KubeAPIBurst, "client-side burst towards the API server")
	flag.StringVar(&cfg.MetricsAddress, "metrics-address", cfg.MetricsAddress, "address of /metrics (empty: off)")
	flag.StringVar(&cfg.HealthAddress, "health-address", cfg.HealthAddress, "address of /healthz (liveness: the CSI socket answers) and /readyz (readiness: the driver can publish) (empty: off)")
	flag.StringVar(&cfg.RequestMode, "request-mode", cfg.RequestMode, "who creates each CertificateRequest: node-bound (the driver, with its own pod-bound token, naming the pod; workloads need no RBAC) or pod-token (the driver, with the pod's own token, as csi-driver-spiffe)")
	flag.IntVar(&cfg.MaxConcurrentIssuances, "max-concurrent-issuances", cfg.MaxConcurrentIssuances, "CertificateRequest creates in flight at once on this node (waits for approval and issuance hold none; a first publish goes before renewals)")
	showVersion := flag.Bool("version", false, "print the version and exit")
	klog.InitFlags(nil)
	flag.Parse()

	if *showVersion {
		fmt.Println(version)
		return
	}
	completed, err := cfg.Complete()
	if err != nil {
		fmt.Fprintf(os.Stderr, "svid-csi-driver: invalid flag %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := app.Run(ctx, completed); err != nil {
		klog.ErrorS(err, "Driver failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}
