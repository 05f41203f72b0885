//go:build tools

// Package tools pins the upstream Kubernetes binaries that the test bed runs:
// the control plane, and the node (kubelet) with the scheduler that places pods
// on it, plus kubectl for the demo's "look for yourself" lines.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
