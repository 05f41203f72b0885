// Package controller approves or denies the CertificateRequests the svid-csi
// driver creates: a client-go informer and rate-limited work queue, in the
// shape of kubernetes/sample-controller, that writes the Approved or Denied
// condition decided by package checks.
package controller
