// Package approver holds the integration tests that run the real approver binary against the test bed's
// control plane (kube-apiserver, cert-manager controller and webhook).
package approver
