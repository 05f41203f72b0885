// Package spiffe holds the contract shared by the driver and the approver:
// the SPIFFE ID of a ServiceAccount, the names, usages and labels carried
// by every CertificateRequest the driver creates, and the label-selected
// watch through which both see them.
package spiffe
