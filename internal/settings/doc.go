// Package settings tells the values the driver's requests and the approver's
// checks must agree on (trust domain, request duration, issuer) while both
// run: the flags, overridden by the shared configuration ConfigMap
// (svid-csi-config) and, for the issuer, by the runtime issuance ConfigMap,
// each watched live and used only while it is valid.
package settings
