// Package spiffe holds the contract shared by the driver and the approver:
// the SPIFFE ID of a ServiceAccount, and the names, usages and labels carried
// by every CertificateRequest the driver creates.
package spiffe
