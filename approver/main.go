// Command svid-csi-approver approves the CertificateRequests the svid-csi
// driver creates when they carry exactly the SPIFFE identity of the pod's
// ServiceAccount, and denies them otherwise.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/approver/app"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	cfg := app.DefaultConfig()
	flag.StringVar(&cfg.TrustDomain, "trust-domain", cfg.TrustDomain, "SPIFFE trust domain every approved ID must be in")
	flag.DurationVar(&cfg.CertificateRequestDuration, "certificate-request-duration", cfg.CertificateRequestDuration, "spec.duration every request must carry")
	flag.StringVar(&cfg.IssuerName, "issuer-name", cfg.IssuerName, "name of the issuer requests must reference (empty: only the runtime ConfigMap's)")
	flag.StringVar(&cfg.IssuerKind, "issuer-kind", cfg.IssuerKind, "kind of that issuer")
	flag.StringVar(&cfg.IssuerGroup, "issuer-group", cfg.IssuerGroup, "API group of that issuer")
	flag.StringVar(&cfg.RuntimeIssuanceConfigMap, "runtime-issuance-configmap", cfg.RuntimeIssuanceConfigMap, "<namespace>/<name> of a ConfigMap whose issuer-name/-kind/-group override the issuer flags while valid")
	flag.StringVar(&cfg.ConfigConfigMap, "config-configmap", "", "<namespace>/<name> of the shared configuration ConfigMap whose TRUST_DOMAIN, CERTIFICATE_REQUEST_DURATION and ISSUER_NAME/_KIND/_GROUP replace the flags of the same meaning while valid, read live")
	flag.StringVar(&cfg.DriverName, "driver-name", cfg.DriverName, "CSI driver name; only requests labelled with it are watched")
	flag.StringVar(&cfg.RequestModes, "request-modes", cfg.RequestModes, "request modes to accept, comma-separated: node-bound (the driver's own pod-bound token; the pod must run on the driver's node), pod-token (the pod's own token)")
	flag.StringVar(&cfg.DriverServiceAccount, "driver-service-account", cfg.DriverServiceAccount, "<namespace>/<name> of the driver's ServiceAccount, whose requests are node-bound (required with --request-modes=node-bound)")
	flag.BoolVar(&cfg.LeaderElection, "leader-election", cfg.LeaderElection, "run workers only while holding the leader Lease")
	flag.StringVar(&cfg.LeaderElectionNamespace, "leader-election-namespace", cfg.LeaderElectionNamespace, "namespace of the leader Lease")
	flag.StringVar(&cfg.LeaderElectionID, "leader-election-id", cfg.LeaderElectionID, "name of the leader Lease")
	flag.DurationVar(&cfg.LeaderElectionLeaseDuration, "leader-election-lease-duration", cfg.LeaderElectionLeaseDuration, "how long standbys wait before taking over an unrenewed lease")
	flag.DurationVar(&cfg.LeaderElectionRenewDeadline, "leader-election-renew-deadline", cfg.LeaderElectionRenewDeadline, "how long the leader retries renewing before it stops leading")
	flag.DurationVar(&cfg.LeaderElectionRetryPeriod, "leader-election-retry-period", cfg.LeaderElectionRetryPeriod, "interval between lease acquire and renew attempts")
	flag.IntVar(&cfg.Workers, "workers", cfg.Workers, "number of requests decided at once; more than about 4 makes cert-manager's webhook throttle its SubjectAccessReviews, and slows decisions down")
	flag.StringVar(&cfg.MetricsAddress, "metrics-address", cfg.MetricsAddress, "address of the Prometheus /metrics endpoint (empty disables)")
	flag.StringVar(&cfg.HealthAddress, "health-address", cfg.HealthAddress, "address of the /healthz and /readyz endpoints")
	flag.StringVar(&cfg.Kubeconfig, "kubeconfig", cfg.Kubeconfig, "path to a kubeconfig (empty: in-cluster configuration)")
	flag.Float64Var(&cfg.KubeAPIQPS, "kube-api-qps", cfg.KubeAPIQPS, "sustained queries per second to the API server")
	flag.IntVar(&cfg.KubeAPIBurst, "kube-api-burst", cfg.KubeAPIBurst, "burst of queries to the API server")
	showVersion := flag.Bool("version", false, "print the version and exit")
	klog.InitFlags(nil)
	flag.Parse()

	if *showVersion {
		fmt.Println(app.Component, version)
		return
	}
	completed, err := cfg.Complete()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: invalid flag %v\n", app.Component, err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	klog.Background().Info("Starting "+app.Component, "version", version)
	if err := app.Run(ctx, completed); err != nil {
		klog.ErrorS(err, "Approver failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}
