package spiffe

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestParseTrustDomain(t *testing.T) {
	for _, name := range []string{"cluster.local", "example.org", "td", "a-b_c.d9", "x.y.z"} {
		td, err := ParseTrustDomain(name)
		if err != nil {
			t.Errorf("ParseTrustDomain(%q): %v", name, err)
			continue
		}
		if td.Name() != name || td.IDString() != "spiffe://"+name {
			t.Errorf("ParseTrustDomain(%q) = %q (%s), want the name unchanged", name, td.Name(), td.IDString())
		}
	}
}

func TestParseTrustDomainRejects(t *testing.T) {
	for _, name := range []string{
		"",
		"spiffe://x",
		"spiffe://cluster.local",
		"x/y",
		"cluster.local/",
		"cluster.local/ns/default",
		"Cluster.Local",
		"CLUSTER",
		"cluster.local:443",
		"x:8080",
		"cluster local",
		"https://cluster.local",
		strings.Repeat("a", MaxTrustDomainLength+1),
	} {
		td, err := ParseTrustDomain(name)
		if err == nil {
			t.Errorf("ParseTrustDomain(%q) = %q, want an error", name, td.Name())
			continue
		}
		if !td.IsZero() {
			t.Errorf("ParseTrustDomain(%q) returned %q with its error, want the zero trust domain", name, td.Name())
		}
		if want := "trust domain " + strconv.Quote(name); !strings.HasPrefix(err.Error(), want) {
			t.Errorf("ParseTrustDomain(%q) error %q does not start with %s", name, err, want)
		}
	}
}

func TestID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	for _, c := range []struct{ ns, sa, want string }{
		{"default", "default", "spiffe://cluster.local/ns/default/sa/default"},
		{"kube-system", "coredns", "spiffe://cluster.local/ns/kube-system/sa/coredns"},
		{"team-a", "my.app_1", "spiffe://cluster.local/ns/team-a/sa/my.app_1"},
	} {
		id, err := ID(td, c.ns, c.sa)
		if err != nil {
			t.Errorf("ID(%q, %q): %v", c.ns, c.sa, err)
			continue
		}
		if id.String() != c.want {
			t.Errorf("ID(%q, %q) = %q, want %q", c.ns, c.sa, id.String(), c.want)
		}
		if id.TrustDomain() != td || id.Path() != "/ns/"+c.ns+"/sa/"+c.sa {
			t.Errorf("ID(%q, %q): trust domain %q, path %q", c.ns, c.sa, id.TrustDomain(), id.Path())
		}
	}

	other := spiffeid.RequireTrustDomainFromString("example.org")
	id, err := ID(other, "ns1", "sa1")
	if err != nil || id.String() != "spiffe://example.org/ns/ns1/sa/sa1" {
		t.Errorf("ID(example.org, ns1, sa1) = %q, %v", id, err)
	}
}

func TestIDRejectsBadSegments(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	for _, c := range []struct{ ns, sa string }{
		{"", "default"},
		{"default", ""},
		{".", "default"},
		{"default", "."},
		{"..", "default"},
		{"default", ".."},
		{"a/b", "default"},
		{"default", "a/b"},
		{"default", "sa%20x"},
	} {
		id, err := ID(td, c.ns, c.sa)
		if err == nil {
			t.Errorf("ID(%q, %q) = %q, want an error", c.ns, c.sa, id)
			continue
		}
		if !id.IsZero() {
			t.Errorf("ID(%q, %q) returned %q with its error, want the zero ID", c.ns, c.sa, id)
		}
		if want := "ServiceAccount " + c.ns + "/" + c.sa + ":"; !strings.Contains(err.Error(), want) {
			t.Errorf("ID(%q, %q) error %q does not name %q", c.ns, c.sa, err, want)
		}
	}
}

func TestServiceAccountUsername(t *testing.T) {
	for _, c := range []struct{ ns, sa, want string }{
		{"default", "default", "system:serviceaccount:default:default"},
		{"kube-system", "coredns", "system:serviceaccount:kube-system:coredns"},
	} {
		if got := ServiceAccountUsername(c.ns, c.sa); got != c.want {
			t.Errorf("ServiceAccountUsername(%q, %q) = %q, want %q", c.ns, c.sa, got, c.want)
		}
	}
}

var hex63 = regexp.MustCompile(`^[0-9a-f]{63}$`)

func TestNodeLabelValue(t *testing.T) {
	for _, n := range []int{1, 10, 62, 63} {
		name := strings.Repeat("n", n)
		if got := NodeLabelValue(name); got != name {
			t.Errorf("NodeLabelValue(%d chars) = %q, want the name unchanged", n, got)
		}
	}
	for _, name := range []string{"node-1", "ip-10-0-0-1.ec2.internal"} {
		if got := NodeLabelValue(name); got != name {
			t.Errorf("NodeLabelValue(%q) = %q, want the name unchanged", name, got)
		}
	}

	seen := map[string]string{}
	for _, n := range []int{64, 65, 100, 253} {
		name := strings.Repeat("a", n-len("node-")) + "node-"
		got := NodeLabelValue(name)
		if !hex63.MatchString(got) {
			t.Errorf("NodeLabelValue(%d chars) = %q, want 63 lowercase hex digits", n, got)
		}
		sum := sha256.Sum256([]byte(name))
		if want := hex.EncodeToString(sum[:])[:63]; got != want {
			t.Errorf("NodeLabelValue(%d chars) = %q, want the first 63 hex digits of its SHA-256 %q", n, got, want)
		}
		if again := NodeLabelValue(name); again != got {
			t.Errorf("NodeLabelValue(%d chars) is not stable: %q then %q", n, got, again)
		}
		if errs := validation.IsValidLabelValue(got); len(errs) > 0 {
			t.Errorf("NodeLabelValue(%d chars) = %q is not a label value: %v", n, got, errs)
		}
		if prev, ok := seen[got]; ok {
			t.Errorf("NodeLabelValue(%q) = NodeLabelValue(%q) = %q", name, prev, got)
		}
		seen[got] = name
	}

	// Two long names that differ only in their last character map apart.
	long := strings.Repeat("x", 70)
	if NodeLabelValue(long+"1") == NodeLabelValue(long+"2") {
		t.Errorf("two different long node names share a label value")
	}
}

func TestUsages(t *testing.T) {
	want := []cmapi.KeyUsage{"key encipherment", "digital signature", "client auth", "server auth"}
	if !slices.Equal(Usages, want) {
		t.Errorf("Usages = %q, want exactly %q", Usages, want)
	}
}
