// Package testbed starts a real Kubernetes control plane on loopback for
// integration tests: etcd, kube-apiserver, kube-controller-manager, and
// cert-manager's controller and webhook, with a CA ClusterIssuer ready. It also
// plays the kubelet's part towards a CSI driver (see Kubelet).
//
// Every process binds to 127.0.0.1 only, is stopped by its PID, and keeps its
// log in the bed's directory so a failing test can print it. The binaries come
// from the repository's bin/ directory (built by `make bin`).
package testbed
