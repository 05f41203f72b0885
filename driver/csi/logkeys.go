package csi

// Log keys, in one place so that every line uses the same names.
const (
	keyMethod   = "method"
	keyRequest  = "request"
	keyDuration = "duration"
	keyCode     = "code"
	keyError    = "err"
	keyVolumeID = "volumeID"
	keyPod      = "pod"
	keyTarget   = "targetPath"
	keyNotAfter = "notAfter"
	keyRenewAt  = "renewAt"
	keyIdentity = "spiffeID"
	keyRequestN = "certificateRequest"
	keyFailures = "failures"
)
