// Package driver holds the integration tests that run the real driver binary,
// under the test bed's kubelet simulator, with the real approver, kube-apiserver
// and cert-manager controller and webhook.
package driver
