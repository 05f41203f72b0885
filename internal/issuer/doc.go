// Package issuer tells which cert-manager issuer is active: the runtime
// ConfigMap's when it is valid, else the one from flags.
package issuer
