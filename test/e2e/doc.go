// Package e2e tests the product as a user installs it, on the test bed's real
// node: kubelet, containerd and runc run the images `make images` builds, and
// overlays/example is rendered with the kustomize API and server-side applied
// (plus only the bed's component). Run as root: `make test-integration`.
package e2e
