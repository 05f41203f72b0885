// Package deploy tests the Kustomize deployment (kustomize/ and overlays/):
// every overlay renders, matches its golden file, keeps the names the binaries
// and the kubelet depend on, and (with the integration tag) passes a
// server-side dry run on the test bed's API server.
package deploy
