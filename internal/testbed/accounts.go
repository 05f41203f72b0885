package testbed

import (
	"context"
	"fmt"

	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// CreateNamespace makes a namespace with a generated name from prefix and
// returns that name.
func (b *Bed) CreateNamespace(ctx context.Context, prefix string) (string, error) {
	ns, err := b.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create namespace %s-*: %w", prefix, err)
	}
	return ns.Name, nil
}

// CreateServiceAccount makes a ServiceAccount (an existing one is fine).
func (b *Bed) CreateServiceAccount(ctx context.Context, namespace, name string) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}
	if _, err := b.Kube.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ServiceAccount %s/%s: %w", namespace, name, err)
	}
	return nil
}

// Grant gives a ServiceAccount the rules, cluster-wide when namespace of the
// binding is empty, else in that namespace. The role is named name.
func (b *Bed) Grant(ctx context.Context, bindingNamespace, name, saNamespace, sa string, rules []rbacv1.PolicyRule) error {
	subject := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: saNamespace, Name: sa}}
	rbac := b.Kube.RbacV1()
	if bindingNamespace == "" {
		if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create ClusterRole %s: %w", name, err)
		}
		binding := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
			Subjects:   subject,
		}
		if _, err := rbac.ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create ClusterRoleBinding %s: %w", name, err)
		}
		return nil
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: bindingNamespace}, Rules: rules}
	if _, err := rbac.Roles(bindingNamespace).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Role %s/%s: %w", bindingNamespace, name, err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: bindingNamespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   subject,
	}
	if _, err := rbac.RoleBindings(bindingNamespace).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create RoleBinding %s/%s: %w", bindingNamespace, name, err)
	}
	return nil
}

// TokenOptions shape a TokenRequest.
type TokenOptions struct {
	Audiences []string
	// Seconds is the lifetime; 0 means the API server's default (1h).
	Seconds int64
	// BoundPod binds the token to a pod, as the kubelet does.
	BoundPod *corev1.Pod
}

// Token gets a real token for a ServiceAccount from the TokenRequest API.
func (b *Bed) Token(ctx context.Context, namespace, sa string, opts TokenOptions) (*authenticationv1.TokenRequestStatus, error) {
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: opts.Audiences}}
	if opts.Seconds > 0 {
		tr.Spec.ExpirationSeconds = &opts.Seconds
	}
	if p := opts.BoundPod; p != nil {
		tr.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: p.Name, UID: types.UID(p.UID)}
	}
	out, err := b.Kube.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, sa, tr, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("request token for ServiceAccount %s/%s: %w", namespace, sa, err)
	}
	return &out.Status, nil
}

// ServiceAccountClients are clients that act as a ServiceAccount, with a
// real token and no client certificate, as a pod in the cluster would.
type ServiceAccountClients struct {
	Kube        kubernetes.Interface
	CertManager cmclient.Interface
	Token       string
}

// ClientsAs returns clients that authenticate as the ServiceAccount.
func (b *Bed) ClientsAs(ctx context.Context, namespace, sa string) (*ServiceAccountClients, error) {
	tok, err := b.Token(ctx, namespace, sa, TokenOptions{Seconds: 3600})
	if err != nil {
		return nil, err
	}
	return b.clientsFor(namespace+"/"+sa, tok.Token)
}

func (b *Bed) clientsFor(who, token string) (*ServiceAccountClients, error) {
	cfg := b.TokenConfig(token)
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("client as %s: %w", who, err)
	}
	cm, err := cmclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cert-manager client as %s: %w", who, err)
	}
	return &ServiceAccountClients{Kube: kube, CertManager: cm, Token: token}, nil
}

// WriteServiceAccountKubeconfig writes a kubeconfig that authenticates as the
// ServiceAccount with a long-lived token and nothing else: what a pod has in
// cluster. Programs under test run with it.
func (b *Bed) WriteServiceAccountKubeconfig(ctx context.Context, path, namespace, sa string) error {
	tok, err := b.Token(ctx, namespace, sa, TokenOptions{Seconds: 24 * 3600})
	if err != nil {
		return err
	}
	return b.WriteKubeconfig(path, tok.Token, "", "")
}

// IdlePod is a Pod object that never runs (no kubelet picks it up): what a
// pod-bound token and the approver's pod check need.
type IdlePod struct {
	Namespace, Name, ServiceAccount string
	// Node is spec.nodeName; empty: not scheduled.
	Node string
	// Driver, when set, gives the pod an inline CSI volume of that driver.
	Driver string
}

// CreateIdlePod creates the pod (its ServiceAccount must exist).
func (b *Bed) CreateIdlePod(ctx context.Context, p IdlePod) (*corev1.Pod, error) {
	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name},
		Spec: corev1.PodSpec{
			NodeName:                     p.Node,
			ServiceAccountName:           p.ServiceAccount,
			AutomountServiceAccountToken: &no,
			Containers:                   []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
	if p.Driver != "" {
		yes := true
		pod.Spec.Volumes = []corev1.Volume{{Name: "spiffe", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: p.Driver, ReadOnly: &yes}}}}
	}
	created, err := b.Kube.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create Pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return created, nil
}

// ClientsAsPod returns clients that authenticate as the pod's ServiceAccount
// with a token bound to the pod, as the kubelet gives one to a pod (or to a
// CSI driver for it): the API server puts the pod's name and UID, and its
// node's, into the user's extra.
func (b *Bed) ClientsAsPod(ctx context.Context, pod *corev1.Pod) (*ServiceAccountClients, error) {
	tok, err := b.Token(ctx, pod.Namespace, pod.Spec.ServiceAccountName, TokenOptions{Seconds: 3600, BoundPod: pod})
	if err != nil {
		return nil, err
	}
	return b.clientsFor(pod.Namespace+"/"+pod.Name, tok.Token)
}

// WriteNodeBoundKubeconfig writes a kubeconfig that authenticates as the
// ServiceAccount with a long-lived token bound to a pod of it on node, as
// the kubelet gives the driver's DaemonSet pod its token: the Node (if
// missing) and an idle Pod named <sa>-<node> are created for it.
func (b *Bed) WriteNodeBoundKubeconfig(ctx context.Context, path, namespace, sa, node string) error {
	if _, err := b.Kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create Node %s: %w", node, err)
	}
	pod, err := b.CreateIdlePod(ctx, IdlePod{Namespace: namespace, Name: sa + "-" + node, ServiceAccount: sa, Node: node})
	if err != nil {
		return err
	}
	tok, err := b.Token(ctx, namespace, sa, TokenOptions{Seconds: 24 * 3600, BoundPod: pod})
	if err != nil {
		return err
	}
	return b.WriteKubeconfig(path, tok.Token, "", "")
}
