package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// The names the example overlay (overlays/example) installs.
const (
	ExampleIssuer     = "svid-csi-ca"     // the CA ClusterIssuer, and its Certificate and Secret
	DriverDaemonSet   = "svid-csi-driver" // in CertManagerNamespace
	ApproverName      = "svid-csi-approver"
	productFieldOwner = "svid-csi-testbed"
)

// ExampleCertificateDuration is the SVID lifetime the bed installs the
// example with: short, so that renewals happen within a test (and the demo).
const ExampleCertificateDuration = 2 * time.Minute

// Product is the example overlay as installed on the bed's node.
type Product struct {
	// Kustomization is the directory of the bed's kustomization: the shipped
	// overlays/example with overlays/components/kubelet-root-dir and the
	// bed's component (internal/testbed/component).
	Kustomization string
	// Objects are what it rendered, as applied.
	Objects []*unstructured.Unstructured
	// CAPEM is the example trust domain's CA (the Secret's ca.crt).
	CAPEM []byte
}

// InstallExample renders and server-side applies overlays/example as a user
// would (plus only the bed's component), plays the cluster admin who approves
// the example CA's own request (the bed runs no cert-manager approver), and
// returns when the CA issuer is Ready, the driver is registered with the
// kubelet and the approver holds its Lease.
func (b *Bed) InstallExample(ctx context.Context) (*Product, error) {
	if b.Node == nil {
		return nil, fmt.Errorf("install the example overlay: the bed has no node (Options.Node)")
	}
	p, err := b.applyExample(ctx, nil)
	if err != nil {
		return nil, err
	}
	if err := b.ApproveCertificateRequests(ctx, CertManagerNamespace, ExampleIssuer); err != nil {
		return nil, err
	}
	if err := b.WaitClusterIssuerReady(ctx, ExampleIssuer); err != nil {
		return nil, err
	}
	secret, err := b.Kube.CoreV1().Secrets(CertManagerNamespace).Get(ctx, ExampleIssuer, getOpts)
	if err != nil {
		return nil, fmt.Errorf("the example CA's Secret: %w", err)
	}
	p.CAPEM = secret.Data["ca.crt"]
	if err := b.WaitDriverRegistered(ctx); err != nil {
		return nil, err
	}
	if _, err := b.WaitLeaseHeld(ctx, CertManagerNamespace, ApproverName); err != nil {
		return nil, err
	}
	return p, nil
}

// ReapplyExample renders the bed's kustomization again with config.env's
// values changed (KEY=value, merged into svid-csi-config, as an operator
// edits config.env) and server-side applies it, as `kubectl apply
// --server-side -k` does; none resets them to the install's. It returns what
// was applied.
func (b *Bed) ReapplyExample(ctx context.Context, config ...string) (*Product, error) {
	return b.applyExample(ctx, config)
}

func (b *Bed) applyExample(ctx context.Context, config []string) (*Product, error) {
	dir, err := b.writeKustomization(config)
	if err != nil {
		return nil, err
	}
	r, err := Render(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, err
	}
	p := &Product{Kustomization: dir, Objects: r.Objects}
	if err := os.WriteFile(filepath.Join(dir, "rendered.yaml"), r.YAML, 0o644); err != nil {
		return nil, fmt.Errorf("write the rendered manifests: %w", err)
	}
	a, err := b.NewApplier(productFieldOwner)
	if err != nil {
		return nil, err
	}
	if err := a.ApplyAll(ctx, r.Objects); err != nil {
		return nil, fmt.Errorf("apply %s: %w", dir, err)
	}
	return p, nil
}

// writeKustomization writes the bed's own kustomization, whose values (the
// kubelet's root, the API server's port) only the running bed knows, with
// config's KEY=value pairs merged into svid-csi-config last. Paths are
// relative: kustomize refuses absolute ones.
func (b *Bed) writeKustomization(config []string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(b.Dir, "kustomize")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	rel := func(p string) (string, error) { return filepath.Rel(dir, filepath.Join(root, p)) }
	var paths [3]string
	for i, p := range []string{"overlays/example", "overlays/components/kubelet-root-dir", "internal/testbed/component"} {
		if paths[i], err = rel(p); err != nil {
			return "", fmt.Errorf("relative path to %s: %w", p, err)
		}
	}
	k := fmt.Sprintf(`# Written by the test bed: the shipped example overlay on the bed's node.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization

resources:
  - %s

components:
  - %s
  - %s

configMapGenerator:
  - name: svid-csi-config
    namespace: %[4]s
    behavior: merge
    literals:
%[5]s  - name: svid-csi-testbed
    namespace: %[4]s
    literals:
      - KUBERNETES_SERVICE_HOST=127.0.0.1
      - KUBERNETES_SERVICE_PORT=%[6]d
      - DATA_ROOT=%[7]s
`, paths[0], paths[1], paths[2], CertManagerNamespace,
		configLiterals(append([]string{"KUBELET_ROOT_DIR=" + b.Node.KubeletRootDir,
			"CERTIFICATE_REQUEST_DURATION=" + ExampleCertificateDuration.String()}, config...)),
		b.apiPort, b.Node.DataRoot())
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		return "", fmt.Errorf("write %s/kustomization.yaml: %w", dir, err)
	}
	return dir, nil
}

// DataRoot is where the driver's --data-root lives on the node's host.
func (n *Node) DataRoot() string { return filepath.Join(n.Dir, "svid-csi") }

// ApproveCertificateRequests approves, as a cluster admin, the requests
// cert-manager makes for Certificate certName, until one is approved.
func (b *Bed) ApproveCertificateRequests(ctx context.Context, namespace, certName string) error {
	cmc := b.CertManager.CertmanagerV1()
	return pollUntil(ctx, time.Minute, "approve the CertificateRequest of Certificate "+namespace+"/"+certName, func(ctx context.Context) error {
		list, err := cmc.CertificateRequests(namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for i := range list.Items {
			cr := &list.Items[i]
			if cr.Annotations[cmapi.CertificateNameKey] != certName {
				continue
			}
			if Decided(cr) != nil {
				return nil
			}
			now := metav1.Now()
			cr.Status.Conditions = append(cr.Status.Conditions, cmapi.CertificateRequestCondition{
				Type: cmapi.CertificateRequestConditionApproved, Status: cmmeta.ConditionTrue,
				Reason: "TestBed", Message: "approved by the test bed's cluster admin", LastTransitionTime: &now,
			})
			if _, err := cmc.CertificateRequests(namespace).UpdateStatus(ctx, cr, metav1.UpdateOptions{}); err != nil {
				return err
			}
			return nil
		}
		return fmt.Errorf("no request yet: %w", errNotReady)
	})
}

// Decided is a request's Approved or Denied condition that is True, or nil.
func Decided(cr *cmapi.CertificateRequest) *cmapi.CertificateRequestCondition {
	for i, c := range cr.Status.Conditions {
		if (c.Type == cmapi.CertificateRequestConditionApproved || c.Type == cmapi.CertificateRequestConditionDenied) && c.Status == cmmeta.ConditionTrue {
			return &cr.Status.Conditions[i]
		}
	}
	return nil
}

// WaitClusterIssuerReady waits until cert-manager says the ClusterIssuer is
// Ready.
func (b *Bed) WaitClusterIssuerReady(ctx context.Context, name string) error {
	return pollUntil(ctx, 2*time.Minute, "ClusterIssuer "+name+" Ready", func(ctx context.Context) error {
		return b.clusterIssuerReady(ctx, name)
	})
}

// WaitDriverRegistered waits until every driver pod is Ready and the node's
// CSINode lists the driver (the kubelet's plugin watcher registered it).
func (b *Bed) WaitDriverRegistered(ctx context.Context) error {
	return pollUntil(ctx, 3*time.Minute, "the driver registered on node "+NodeName, func(ctx context.Context) error {
		ds, err := b.Kube.AppsV1().DaemonSets(CertManagerNamespace).Get(ctx, DriverDaemonSet, getOpts)
		if err != nil {
			return err
		}
		st := ds.Status
		if st.ObservedGeneration < ds.Generation || st.DesiredNumberScheduled == 0 ||
			st.UpdatedNumberScheduled != st.DesiredNumberScheduled || st.NumberReady != st.DesiredNumberScheduled {
			return fmt.Errorf("DaemonSet %s: %d desired, %d updated, %d ready: %w", DriverDaemonSet,
				st.DesiredNumberScheduled, st.UpdatedNumberScheduled, st.NumberReady, errNotReady)
		}
		csiNode, err := b.Kube.StorageV1().CSINodes().Get(ctx, NodeName, getOpts)
		if err != nil {
			return err
		}
		for _, d := range csiNode.Spec.Drivers {
			if d.Name == spiffe.DefaultDriverName {
				return nil
			}
		}
		return fmt.Errorf("CSINode %s lists no %s: %w", NodeName, spiffe.DefaultDriverName, errNotReady)
	})
}

// WaitLeaseHeld waits until a Lease has a holder that renewed it within its
// duration, and returns the holder.
func (b *Bed) WaitLeaseHeld(ctx context.Context, namespace, name string) (string, error) {
	var holder string
	err := pollUntil(ctx, 2*time.Minute, "Lease "+namespace+"/"+name+" held", func(ctx context.Context) error {
		l, err := b.Kube.CoordinationV1().Leases(namespace).Get(ctx, name, getOpts)
		if err != nil {
			return err
		}
		s := l.Spec
		if s.HolderIdentity == nil || *s.HolderIdentity == "" || s.RenewTime == nil || s.LeaseDurationSeconds == nil {
			return fmt.Errorf("Lease %s/%s: no holder: %w", namespace, name, errNotReady)
		}
		if age := time.Since(s.RenewTime.Time); age > time.Duration(*s.LeaseDurationSeconds)*time.Second {
			return fmt.Errorf("Lease %s/%s: last renewed %s ago: %w", namespace, name, age.Round(time.Second), errNotReady)
		}
		holder = *s.HolderIdentity
		return nil
	})
	return holder, err
}

// pollUntil calls check every 250 ms until it returns nil, or fails with the
// last error once timeout or ctx ends.
func pollUntil(ctx context.Context, timeout time.Duration, what string, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// configLiterals lists KEY=value pairs as the literals of a generator, one
// per key (a later pair wins), in the order the keys first appear.
func configLiterals(pairs []string) string {
	var keys []string
	values := map[string]string{}
	for _, p := range pairs {
		k, v, _ := strings.Cut(p, "=")
		if _, seen := values[k]; !seen {
			keys = append(keys, k)
		}
		values[k] = v
	}
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "      - %s=%s\n", k, values[k])
	}
	return b.String()
}
