//go:build tools

// Package tools pins the upstream Kubernetes binaries that the test bed runs.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
