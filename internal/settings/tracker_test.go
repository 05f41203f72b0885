package settings

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2/ktesting"
)

var (
	flagIssuer = cmmeta.IssuerReference{Name: "flag-ca", Kind: "ClusterIssuer", Group: "cert-manager.io"}
	cmIssuer   = cmmeta.IssuerReference{Name: "runtime-ca", Kind: "Issuer", Group: "example.io"}
	cmName     = types.NamespacedName{Namespace: "cert-manager", Name: "svid-csi-issuer"}
	flagTD     = spiffeid.RequireTrustDomainFromString("cluster.local")
)

// withIssuer is the flags' settings with ref as their issuer.
func withIssuer(ref cmmeta.IssuerReference) Settings {
	return Settings{TrustDomain: flagTD, Duration: time.Hour, Issuer: ref}
}

func configMap(data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: cmName.Namespace, Name: cmName.Name},
		Data:       data,
	}
}

func validData() map[string]string {
	return map[string]string{keyName: cmIssuer.Name, keyKind: cmIssuer.Kind, keyGroup: cmIssuer.Group}
}

// start runs a Tracker until the test ends and waits for it to sync.
func start(t *testing.T, flags cmmeta.IssuerReference, withCM bool, objs ...runtime.Object) (*Tracker, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset(objs...)
	opts := Options{Flags: withIssuer(flags), Client: client}
	if withCM {
		opts.IssuerConfigMap = cmName
	}
	return startWith(t, opts), client
}

// startWith runs a Tracker of opts until the test ends and waits for it to sync.
func startWith(t *testing.T, opts Options) *Tracker {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	tr, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := tr.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true,
		func(context.Context) (bool, error) { return tr.HasSynced(), nil }); err != nil {
		t.Fatalf("tracker did not sync: %v", err)
	}
	return tr
}

func wantCurrent(t *testing.T, tr *Tracker, want cmmeta.IssuerReference, wantOK bool) {
	t.Helper()
	var got cmmeta.IssuerReference
	var ok bool
	err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 5*time.Second, true,
		func(context.Context) (bool, error) {
			cur := tr.Current()
			got, ok = cur.Issuer, cur.HasIssuer()
			return got == want && ok == wantOK, nil
		})
	if err != nil {
		t.Fatalf("Current() = %+v, %v; want %+v, %v", got, ok, want, wantOK)
	}
}

func TestFlagsOnly(t *testing.T) {
	tr, _ := start(t, flagIssuer, false)
	wantCurrent(t, tr, flagIssuer, true)
}

func TestNoFlagsNoConfigMapIsNotOK(t *testing.T) {
	tr, _ := start(t, cmmeta.IssuerReference{}, false)
	wantCurrent(t, tr, cmmeta.IssuerReference{}, false)
}

func TestNoFlagsAbsentConfigMapIsNotOK(t *testing.T) {
	tr, _ := start(t, cmmeta.IssuerReference{}, true)
	wantCurrent(t, tr, cmmeta.IssuerReference{}, false)
}

func TestValidConfigMapWins(t *testing.T) {
	tr, _ := start(t, flagIssuer, true, configMap(validData()))
	wantCurrent(t, tr, cmIssuer, true)
}

func TestValidConfigMapWithoutFlags(t *testing.T) {
	tr, _ := start(t, cmmeta.IssuerReference{}, true, configMap(validData()))
	wantCurrent(t, tr, cmIssuer, true)
}

// waitInvalid waits until the tracker has seen a ConfigMap whose problem
// mentions want.
func waitInvalid(t *testing.T, tr *Tracker, want string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 5*time.Second, true,
		func(context.Context) (bool, error) {
			tr.mu.RLock()
			defer tr.mu.RUnlock()
			for _, s := range tr.sources {
				if strings.Contains(s.invalid, want) {
					return true, nil
				}
			}
			return false, nil
		})
	if err != nil {
		t.Fatalf("the tracker never saw the ConfigMap invalid (%q)", want)
	}
}

// At start there is no last valid state: an invalid ConfigMap means the flags.
func TestInvalidConfigMapAtStartUsesFlags(t *testing.T) {
	for _, key := range []string{keyName, keyKind, keyGroup} {
		t.Run("missing "+key, func(t *testing.T) {
			data := validData()
			delete(data, key)
			tr, _ := start(t, flagIssuer, true, configMap(data))
			wantCurrent(t, tr, flagIssuer, true)
		})
		t.Run("empty "+key, func(t *testing.T) {
			data := validData()
			data[key] = ""
			tr, _ := start(t, flagIssuer, true, configMap(data))
			wantCurrent(t, tr, flagIssuer, true)
		})
	}
}

func TestInvalidConfigMapWithoutFlagsIsNotOK(t *testing.T) {
	data := validData()
	delete(data, keyGroup)
	tr, _ := start(t, cmmeta.IssuerReference{}, true, configMap(data))
	wantCurrent(t, tr, cmmeta.IssuerReference{}, false)
}

func TestConfigMapChangesAtRunTime(t *testing.T) {
	tr, client := start(t, flagIssuer, true)
	wantCurrent(t, tr, flagIssuer, true)
	cms := client.CoreV1().ConfigMaps(cmName.Namespace)

	if _, err := cms.Create(t.Context(), configMap(validData()), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantCurrent(t, tr, cmIssuer, true)

	// An invalid edit keeps the last valid issuer, not the flags'.
	invalid := configMap(validData())
	invalid.Data[keyKind] = ""
	if _, err := cms.Update(t.Context(), invalid, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitInvalid(t, tr, "issuer-kind")
	wantCurrent(t, tr, cmIssuer, true)

	// Valid again, naming another issuer: that one.
	again := configMap(validData())
	again.Data[keyName] = "runtime-ca-2"
	if _, err := cms.Update(t.Context(), again, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantCurrent(t, tr, cmmeta.IssuerReference{Name: "runtime-ca-2", Kind: cmIssuer.Kind, Group: cmIssuer.Group}, true)

	// The runtime ConfigMap, unlike svid-csi-config, is the operator's to
	// delete: deleted means the flags' issuer.
	if err := cms.Delete(t.Context(), cmName.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wantCurrent(t, tr, flagIssuer, true)
}

func TestOtherConfigMapsAreIgnored(t *testing.T) {
	other := configMap(validData())
	other.Name = "something-else"
	tr, _ := start(t, flagIssuer, true, other)
	wantCurrent(t, tr, flagIssuer, true)
}

func TestNewRejectsFlagIssuerWithoutKind(t *testing.T) {
	_, err := New(Options{Flags: withIssuer(cmmeta.IssuerReference{Name: "ca", Group: "cert-manager.io"})})
	if err == nil {
		t.Fatal("New accepted an issuer without a kind")
	}
}

func TestErrNoIssuerSaysHowToConfigure(t *testing.T) {
	for _, want := range []string{"--issuer-name", "--runtime-issuance-configmap", keyName, keyKind, keyGroup, "--config-configmap", KeyIssuerName} {
		if !strings.Contains(ErrNoIssuer.Error(), want) {
			t.Errorf("ErrNoIssuer = %q, does not mention %q", ErrNoIssuer, want)
		}
	}
	if !errors.Is(ErrNoIssuer, ErrNoIssuer) {
		t.Fatal("unreachable")
	}
}

func TestParseNamespacedName(t *testing.T) {
	for in, want := range map[string]types.NamespacedName{
		"cert-manager/svid-csi-issuer": {Namespace: "cert-manager", Name: "svid-csi-issuer"},
		"a/b.c":                        {Namespace: "a", Name: "b.c"},
	} {
		got, err := ParseNamespacedName(in)
		if err != nil || got != want {
			t.Errorf("ParseNamespacedName(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "name", "/name", "ns/", "ns/a/b", "NS/name", "ns/Name_"} {
		if got, err := ParseNamespacedName(in); err == nil {
			t.Errorf("ParseNamespacedName(%q) = %v, want an error", in, got)
		}
	}
}

// A bad value in either ConfigMap is a KeyError naming its key, which
// quotes the value bounded.
func TestInvalidValues(t *testing.T) {
	runtimeCM := func(data map[string]string) error {
		_, err := fromRuntimeConfigMap(configMap(data), Settings{})
		return err
	}
	configCM := func(data map[string]string) error {
		_, err := fromConfigConfigMap(configConfigMap(data), withIssuer(flagIssuer))
		return err
	}
	for name, c := range map[string]struct {
		base       func() map[string]string
		parse      func(map[string]string) error
		key, value string
	}{
		"name with a slash":            {validData, runtimeCM, keyName, "a/b"},
		"upper-case name":              {validData, runtimeCM, keyName, "CA"},
		"kind with a dot":              {validData, runtimeCM, keyKind, "Cluster.Issuer"},
		"kind from a digit":            {validData, runtimeCM, keyKind, "1Issuer"},
		"kind with a newline":          {validData, runtimeCM, keyKind, "Issuer\n"},
		"group with a space":           {validData, runtimeCM, keyGroup, "cert manager.io"},
		"a very long name":             {validData, runtimeCM, keyName, strings.Repeat("a", 300)},
		"control in the group":         {validData, runtimeCM, keyGroup, "cert-manager.io\x1b[31m"},
		"a trust domain with a scheme": {shippedConfig, configCM, KeyTrustDomain, "spiffe://cluster.local"},
		"a trust domain with a path":   {shippedConfig, configCM, KeyTrustDomain, "cluster.local/ns"},
		"an upper-case trust domain":   {shippedConfig, configCM, KeyTrustDomain, "Cluster.local"},
		"a long trust domain":          {shippedConfig, configCM, KeyTrustDomain, strings.Repeat("a", 300) + "/"},
		"a duration without a unit":    {shippedConfig, configCM, KeyDuration, "3600"},
		"a negative duration":          {shippedConfig, configCM, KeyDuration, "-1h"},
		"a zero duration":              {shippedConfig, configCM, KeyDuration, "0s"},
		"an escape in the duration":    {shippedConfig, configCM, KeyDuration, "1h\x1b[31m"},
		"ISSUER_NAME with a slash":     {shippedConfig, configCM, KeyIssuerName, "a/b"},
		"ISSUER_KIND with a dot":       {shippedConfig, configCM, KeyIssuerKind, "Cluster.Issuer"},
		"ISSUER_GROUP with a space":    {shippedConfig, configCM, KeyIssuerGroup, "cert manager.io"},
	} {
		t.Run(name, func(t *testing.T) {
			data := c.base()
			data[c.key] = c.value
			err := c.parse(data)
			var ke *KeyError
			if !errors.As(err, &ke) || ke.Key != c.key {
				t.Fatalf("parse = %v, want a KeyError for %s", err, c.key)
			}
			if strings.ContainsAny(err.Error(), "\n\x1b") || len(err.Error()) > 400 {
				t.Errorf("error %q echoes the value raw or unbounded", err)
			}
		})
	}
	if err := Validate(cmIssuer); err != nil {
		t.Errorf("Validate(%+v) = %v", cmIssuer, err)
	}
}

// An invalid ConfigMap is logged and recorded once per content, on the
// ConfigMap, and never changes the active issuer.
func TestInvalidConfigMapRecordedOnce(t *testing.T) {
	ctx := t.Context()
	client := fake.NewClientset(configMap(validData()))
	rec := record.NewFakeRecorder(10)
	tr := startWith(t, Options{Flags: withIssuer(flagIssuer), IssuerConfigMap: cmName, Client: client, Recorder: rec})
	wantCurrent(t, tr, cmIssuer, true)
	cms := client.CoreV1().ConfigMaps(cmName.Namespace)

	bad := configMap(validData())
	delete(bad.Data, keyGroup)
	if _, err := cms.Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitInvalid(t, tr, keyGroup)
	// The same problem again (another edit of the ConfigMap): no new Event.
	bad.Labels = map[string]string{"edited": "again"}
	if _, err := cms.Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Another problem: a second Event.
	bad.Data[keyKind] = "Not.A.Kind"
	bad.Data[keyGroup] = "example.io"
	if _, err := cms.Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitInvalid(t, tr, keyKind)
	wantCurrent(t, tr, cmIssuer, true)

	var events []string
	timeout := time.After(5 * time.Second)
	for len(events) < 2 {
		select {
		case e := <-rec.Events:
			events = append(events, e)
		case <-timeout:
			t.Fatalf("events = %q, want 2 (one per problem)", events)
		}
	}
	select {
	case e := <-rec.Events:
		t.Fatalf("a third event %q, want one per problem", e)
	case <-time.After(100 * time.Millisecond):
	}
	for i, want := range []string{keyGroup, keyKind} {
		if !strings.HasPrefix(events[i], "Warning "+EventInvalid+" ") || !strings.Contains(events[i], want) ||
			!strings.Contains(events[i], RefString(cmIssuer)) {
			t.Errorf("event %d = %q, want a %s Warning naming %s and the issuer kept", i, events[i], EventInvalid, want)
		}
	}
}

func TestChangedIsClosedOnSwitch(t *testing.T) {
	tr, client := start(t, flagIssuer, true)
	ch := tr.Changed()
	select {
	case <-ch:
		t.Fatal("Changed closed before any change")
	default:
	}
	if _, err := client.CoreV1().ConfigMaps(cmName.Namespace).Create(t.Context(), configMap(validData()), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("Changed not closed after the switch")
	}
	if ref := tr.Current().Issuer; ref != cmIssuer {
		t.Fatalf("Current = %+v after Changed, want %+v", ref, cmIssuer)
	}
	if tr.Changed() == ch {
		t.Fatal("Changed returned the closed channel again")
	}
}

// The issuer active before a switch is accepted only for requests created
// up to PreviousSkew after it, and only within PreviousWindow.
func TestPreviousIssuerWindow(t *testing.T) {
	ctx := t.Context()
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	client := fake.NewClientset()
	tr := startWith(t, Options{Flags: withIssuer(flagIssuer), IssuerConfigMap: cmName, Client: client, Now: clock})
	wantCurrent(t, tr, flagIssuer, true)
	if prev := tr.Previous(clock()); len(prev) > 0 {
		t.Fatal("Previous before any switch")
	}

	switched := clock()
	if _, err := client.CoreV1().ConfigMaps(cmName.Namespace).Create(ctx, configMap(validData()), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantCurrent(t, tr, cmIssuer, true)
	if prev := tr.Previous(switched.Add(-time.Minute)); len(prev) != 1 || prev[0].Issuer != flagIssuer {
		t.Errorf("Previous(before the switch) = %+v; want the flags' issuer", prev)
	}
	if prev := tr.Previous(switched.Add(PreviousSkew)); len(prev) != 1 || prev[0].Issuer != flagIssuer {
		t.Errorf("Previous(within the skew) = %+v; want the flags' issuer", prev)
	}
	if prev := tr.Previous(switched.Add(PreviousSkew + time.Second)); len(prev) > 0 {
		t.Error("Previous accepted a request made well after the switch")
	}
	advance(PreviousWindow + time.Second)
	if prev := tr.Previous(switched); len(prev) > 0 {
		t.Error("Previous accepted the old issuer after the window")
	}
}

// Fresh reads the API server, not the cache: here the informer never runs.
// A read is shared only with callers whose request existed when it started:
// an answer older than the request could predate the edit the request was
// made after.
func TestFreshReadsTheAPIServer(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	client := fake.NewClientset()
	tr, err := New(Options{Flags: withIssuer(flagIssuer), IssuerConfigMap: cmName, Client: client, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	reads := 0
	client.PrependReactor("get", "configmaps", func(clienttesting.Action) (bool, runtime.Object, error) {
		reads++
		return false, nil, nil
	})
	fresh := func(seen time.Time, want cmmeta.IssuerReference, wantReads int) {
		t.Helper()
		if got, err := tr.Fresh(ctx, seen); err != nil || got.Issuer != want || reads != wantReads {
			t.Fatalf("Fresh = %+v, %v after %d reads; want %+v after %d", got, err, reads, want, wantReads)
		}
	}
	first := clock()
	fresh(first, flagIssuer, 1) // not found: the flags

	cms := client.CoreV1().ConfigMaps(cmName.Namespace)
	if _, err := cms.Create(ctx, configMap(validData()), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fresh(first, flagIssuer, 1) // a request seen before that read: it answers
	advance(time.Millisecond)
	fresh(clock(), cmIssuer, 2) // a request seen after it: read again
	if ref := tr.Current().Issuer; ref != flagIssuer {
		t.Fatalf("Fresh changed Current to %+v", ref)
	}

	bad := configMap(validData())
	bad.Data[keyName] = ""
	if _, err := cms.Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	advance(time.Millisecond)
	// Invalid: no answer to deny on (which issuer each driver uses then
	// depends on what it saw last).
	if _, err := tr.Fresh(ctx, clock()); !errors.Is(err, ErrInvalidConfigMap) || !strings.Contains(err.Error(), keyName) {
		t.Fatalf("Fresh = %v, want ErrInvalidConfigMap naming %s", err, keyName)
	}
}

// A caller whose deadline passes while a slow read runs gets its own error
// at its deadline; the read goes on for the others.
func TestFreshHonoursTheCallersDeadline(t *testing.T) {
	client := fake.NewClientset()
	release := make(chan struct{})
	client.PrependReactor("get", "configmaps", func(clienttesting.Action) (bool, runtime.Object, error) {
		<-release
		return false, nil, nil
	})
	tr, err := New(Options{Flags: withIssuer(flagIssuer), IssuerConfigMap: cmName, Client: client})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := tr.Fresh(ctx, start); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Fresh = %v, want the caller's deadline", err)
	}
	if waited := time.Since(start); waited > time.Second {
		t.Fatalf("Fresh returned after %v, want at the caller's 100ms deadline", waited)
	}
	close(release)
	if got, err := tr.Fresh(t.Context(), start); err != nil || got.Issuer != flagIssuer {
		t.Fatalf("the shared read: %+v, %v; want the flags' issuer", got, err)
	}
}

// Reading the ConfigMap at start is no switch: the flags' issuer, assumed
// until then, is not a previous issuer to accept.
func TestStartIsNoSwitch(t *testing.T) {
	tr, _ := start(t, flagIssuer, true, configMap(validData()))
	wantCurrent(t, tr, cmIssuer, true)
	if prev := tr.Previous(time.Now().Add(-time.Hour)); len(prev) > 0 {
		t.Fatalf("Previous = %+v after start, want none", prev)
	}
}

// An approver that starts leading records the ConfigMap's current problem,
// which it saw (and, standing by, did not record) before.
func TestRecordInvalidAgain(t *testing.T) {
	bad := configMap(validData())
	delete(bad.Data, keyName)
	rec := record.NewFakeRecorder(10)
	tr := startWith(t, Options{Flags: withIssuer(flagIssuer), IssuerConfigMap: cmName, Client: fake.NewClientset(bad), Recorder: rec})
	select {
	case <-rec.Events: // the first sight's
	case <-time.After(5 * time.Second):
		t.Fatal("no Event for the invalid ConfigMap")
	}
	tr.RecordInvalid()
	select {
	case e := <-rec.Events:
		if !strings.Contains(e, EventInvalid) || !strings.Contains(e, keyName) {
			t.Fatalf("event %q", e)
		}
	case <-time.After(time.Second):
		t.Fatal("RecordInvalid recorded nothing")
	}
}
