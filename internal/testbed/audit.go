package testbed

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// auditPolicy records every request on CertificateRequests (and nothing
// else) at Metadata level, so tests can count what a client did at the API
// server itself.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  resources:
  - group: cert-manager.io
    resources: ["certificaterequests", "certificaterequests/status"]
- level: None
`

// AuditEvent is one request the API server served on CertificateRequests.
type AuditEvent struct {
	Stage string `json:"stage"`
	Verb  string `json:"verb"`
	User  struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

func (b *Bed) auditFiles() (policy, log string, err error) {
	policy, log = filepath.Join(b.Dir, "audit-policy.yaml"), filepath.Join(b.Dir, "audit.log")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return "", "", fmt.Errorf("write audit policy: %w", err)
	}
	return policy, log, nil
}

// AuditEvents reads the completed requests on CertificateRequests so far
// (long-running watches appear once, when they start).
func (b *Bed) AuditEvents() ([]AuditEvent, error) {
	f, err := os.Open(filepath.Join(b.Dir, "audit.log"))
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	defer f.Close()
	var out []AuditEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev AuditEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("parse audit log: %w", err)
		}
		if ev.Stage == "ResponseComplete" || ev.Stage == "ResponseStarted" {
			out = append(out, ev)
		}
	}
	return out, sc.Err()
}
