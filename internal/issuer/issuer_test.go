package issuer

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"
)

var (
	flagIssuer = cmmeta.IssuerReference{Name: "flag-ca", Kind: "ClusterIssuer", Group: "cert-manager.io"}
	cmIssuer   = cmmeta.IssuerReference{Name: "runtime-ca", Kind: "Issuer", Group: "example.io"}
	cmName     = types.NamespacedName{Namespace: "cert-manager", Name: "svid-csi-issuer"}
)

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
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	client := fake.NewClientset(objs...)
	opts := Options{Flags: flags, Client: client}
	if withCM {
		opts.ConfigMap = cmName
	}
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
	return tr, client
}

func wantCurrent(t *testing.T, tr *Tracker, want cmmeta.IssuerReference, wantOK bool) {
	t.Helper()
	var got cmmeta.IssuerReference
	var ok bool
	err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 5*time.Second, true,
		func(context.Context) (bool, error) {
			got, ok = tr.Current()
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

func TestInvalidConfigMapFallsBackToFlags(t *testing.T) {
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

	invalid := configMap(validData())
	invalid.Data[keyKind] = ""
	if _, err := cms.Update(t.Context(), invalid, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantCurrent(t, tr, flagIssuer, true)

	if _, err := cms.Update(t.Context(), configMap(validData()), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantCurrent(t, tr, cmIssuer, true)

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
	_, err := New(Options{Flags: cmmeta.IssuerReference{Name: "ca", Group: "cert-manager.io"}})
	if err == nil {
		t.Fatal("New accepted an issuer without a kind")
	}
}

func TestErrNoIssuerSaysHowToConfigure(t *testing.T) {
	for _, want := range []string{"--issuer-name", "--runtime-issuance-configmap", keyName, keyKind, keyGroup} {
		if !strings.Contains(ErrNoIssuer.Error(), want) {
			t.Errorf("ErrNoIssuer = %q, does not mention %q", ErrNoIssuer, want)
		}
	}
	if !errors.Is(ErrNoIssuer, ErrNoIssuer) {
		t.Fatal("unreachable")
	}
}

func TestParseConfigMap(t *testing.T) {
	for in, want := range map[string]types.NamespacedName{
		"cert-manager/svid-csi-issuer": {Namespace: "cert-manager", Name: "svid-csi-issuer"},
		"a/b.c":                        {Namespace: "a", Name: "b.c"},
	} {
		got, err := ParseConfigMap(in)
		if err != nil || got != want {
			t.Errorf("ParseConfigMap(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "name", "/name", "ns/", "ns/a/b", "NS/name", "ns/Name_"} {
		if got, err := ParseConfigMap(in); err == nil {
			t.Errorf("ParseConfigMap(%q) = %v, want an error", in, got)
		}
	}
}
