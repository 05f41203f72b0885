package settings

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
)

var configName = types.NamespacedName{Namespace: "cert-manager", Name: "svid-csi-config"}

func configConfigMap(data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: configName.Namespace, Name: configName.Name}, Data: data}
}

// config.env as the base ships it, with the keys no binary reads live.
func shippedConfig() map[string]string {
	return map[string]string{
		KeyTrustDomain: "cluster.local", KeyDuration: "1h",
		KeyIssuerName: "flag-ca", KeyIssuerKind: "ClusterIssuer", KeyIssuerGroup: "cert-manager.io",
		"ISSUER_RESOURCE": "clusterissuers.cert-manager.io", "RUNTIME_ISSUANCE_CONFIGMAP": "svid-csi-issuer",
	}
}

// waitSettings waits until Current is want.
func waitSettings(t *testing.T, tr *Tracker, want Settings) {
	t.Helper()
	var got Settings
	err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 5*time.Second, true,
		func(context.Context) (bool, error) { got = tr.Current(); return got == want, nil })
	if err != nil {
		t.Fatalf("Current() = %v; want %v", got, want)
	}
}

func startConfig(t *testing.T, rec record.EventRecorder, objs ...*corev1.ConfigMap) (*Tracker, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset()
	for _, o := range objs {
		if err := client.Tracker().Add(o); err != nil {
			t.Fatal(err)
		}
	}
	return startWith(t, Options{Flags: withIssuer(flagIssuer), ConfigConfigMap: configName,
		IssuerConfigMap: cmName, Client: client, Recorder: rec}), client
}

func TestConfigConfigMapReplacesTheFlags(t *testing.T) {
	data := shippedConfig()
	data[KeyTrustDomain], data[KeyDuration], data[KeyIssuerName] = "example.org", "2h", "other-ca"
	delete(data, KeyIssuerKind) // kind and group default to the flags'
	delete(data, KeyIssuerGroup)
	tr, _ := startConfig(t, nil, configConfigMap(data))
	waitSettings(t, tr, Settings{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Duration: 2 * time.Hour,
		Issuer: cmmeta.IssuerReference{Name: "other-ca", Kind: flagIssuer.Kind, Group: flagIssuer.Group}})
}

// An empty or absent key leaves the flag's value.
func TestConfigConfigMapEmptyKeysLeaveTheFlags(t *testing.T) {
	tr, _ := startConfig(t, nil, configConfigMap(map[string]string{KeyTrustDomain: "", KeyDuration: "30m"}))
	waitSettings(t, tr, Settings{TrustDomain: flagTD, Duration: 30 * time.Minute, Issuer: flagIssuer})
}

// The runtime issuance ConfigMap's issuer wins over svid-csi-config's; when
// it goes, svid-csi-config's issuer (not the flags') is active again.
func TestRuntimeIssuerWinsOverConfig(t *testing.T) {
	data := shippedConfig()
	data[KeyIssuerName] = "config-ca"
	configIssuer := cmmeta.IssuerReference{Name: "config-ca", Kind: "ClusterIssuer", Group: "cert-manager.io"}
	tr, client := startConfig(t, nil, configConfigMap(data), configMap(validData()))
	waitSettings(t, tr, Settings{TrustDomain: flagTD, Duration: time.Hour, Issuer: cmIssuer})
	if err := client.CoreV1().ConfigMaps(cmName.Namespace).Delete(t.Context(), cmName.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSettings(t, tr, Settings{TrustDomain: flagTD, Duration: time.Hour, Issuer: configIssuer})
}

// A live edit of the duration or the trust domain is a change: Changed is
// closed and the settings before it are Previous.
func TestConfigChangesAtRunTime(t *testing.T) {
	tr, client := startConfig(t, nil, configConfigMap(shippedConfig()))
	before := withIssuer(flagIssuer)
	waitSettings(t, tr, before)
	ch := tr.Changed()
	cms := client.CoreV1().ConfigMaps(configName.Namespace)

	data := shippedConfig()
	data[KeyDuration] = "2h"
	if _, err := cms.Update(t.Context(), configConfigMap(data), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	after := before
	after.Duration = 2 * time.Hour
	waitSettings(t, tr, after)
	select {
	case <-ch:
	default:
		t.Fatal("Changed not closed after the duration changed")
	}
	if prev := tr.Previous(time.Now()); len(prev) != 1 || prev[0] != before {
		t.Fatalf("Previous = %v; want [%v]", prev, before)
	}

	data[KeyTrustDomain] = "example.org"
	if _, err := cms.Update(t.Context(), configConfigMap(data), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	middle := after
	after.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	waitSettings(t, tr, after)
	// Two quick edits: a request may carry either settings they replaced.
	if prev := tr.Previous(time.Now()); len(prev) != 2 || prev[0] != middle || prev[1] != before {
		t.Fatalf("Previous = %v; want [%v %v], newest first", prev, middle, before)
	}

	// Deleted (a prune, a mistake): its last values stay, not the flags'.
	// The pods no longer roll with it, so the flags of each may be of
	// another time than the others'.
	if err := cms.Delete(t.Context(), configName.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deletion seen", func() bool {
		tr.mu.RLock()
		defer tr.mu.RUnlock()
		return tr.sources[0].gone
	})
	if got := tr.Current(); got != after {
		t.Fatalf("Current = %v after the deletion, want the last values %v", got, after)
	}
	if got, err := tr.Fresh(t.Context(), time.Now()); err != nil || got != after {
		t.Fatalf("Fresh = %v, %v after the deletion, want the last values %v", got, err, after)
	}
	// Created again: its values.
	if _, err := cms.Create(t.Context(), configConfigMap(shippedConfig()), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSettings(t, tr, before)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 5*time.Second, true,
		func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("never: %s", what)
	}
}

// An invalid svid-csi-config keeps its last valid values (at start: the
// flags'), with one Event naming the key.
func TestInvalidConfigKeepsLastValid(t *testing.T) {
	rec := record.NewFakeRecorder(10)
	data := shippedConfig()
	data[KeyDuration] = "2h"
	tr, client := startConfig(t, rec, configConfigMap(data))
	valid := withIssuer(flagIssuer)
	valid.Duration = 2 * time.Hour
	waitSettings(t, tr, valid)

	for _, c := range []struct{ key, value string }{{KeyDuration, "two hours"}, {KeyTrustDomain, "Example.ORG"}} {
		bad := shippedConfig()
		bad[c.key] = c.value
		if _, err := client.CoreV1().ConfigMaps(configName.Namespace).Update(t.Context(), configConfigMap(bad), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitInvalid(t, tr, c.key)
		if got := tr.Current(); got != valid {
			t.Fatalf("%s=%q: Current = %v, want the last valid %v", c.key, c.value, got, valid)
		}
		select {
		case e := <-rec.Events:
			if !strings.HasPrefix(e, "Warning "+EventInvalidConfig+" ") || !strings.Contains(e, c.key) || !strings.Contains(e, "duration=2h0m0s") {
				t.Errorf("event %q: want a %s Warning naming %s and the settings kept", e, EventInvalidConfig, c.key)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s=%q: no Event", c.key, c.value)
		}
	}
}

func TestInvalidConfigAtStartUsesFlags(t *testing.T) {
	data := shippedConfig()
	data[KeyDuration], data[KeyIssuerKind] = "3h", "Not.A.Kind"
	tr, _ := startConfig(t, nil, configConfigMap(data))
	waitInvalid(t, tr, KeyIssuerKind)
	if got := tr.Current(); got != withIssuer(flagIssuer) {
		t.Fatalf("Current = %v, want the flags' %v", got, withIssuer(flagIssuer))
	}
}

// Fresh reads both ConfigMaps from the API server; an invalid one is no
// answer to deny on.
func TestFreshReadsBothConfigMaps(t *testing.T) {
	data := shippedConfig()
	data[KeyDuration] = "2h"
	client := fake.NewClientset(configConfigMap(data), configMap(validData()))
	tr, err := New(Options{Flags: withIssuer(flagIssuer), ConfigConfigMap: configName, IssuerConfigMap: cmName, Client: client})
	if err != nil {
		t.Fatal(err)
	}
	got, err := tr.Fresh(t.Context(), time.Now())
	want := Settings{TrustDomain: flagTD, Duration: 2 * time.Hour, Issuer: cmIssuer}
	if err != nil || got != want {
		t.Fatalf("Fresh = %v, %v; want %v", got, err, want)
	}

	bad := shippedConfig()
	bad[KeyDuration] = "soon"
	tr2, err := New(Options{Flags: withIssuer(flagIssuer), ConfigConfigMap: configName, Client: fake.NewClientset(configConfigMap(bad))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr2.Fresh(t.Context(), time.Now()); !errors.Is(err, ErrInvalidConfigMap) || !strings.Contains(err.Error(), KeyDuration) {
		t.Fatalf("Fresh = %v, want ErrInvalidConfigMap naming %s", err, KeyDuration)
	}
}

func TestNewNeedsATrustDomainAndADuration(t *testing.T) {
	for name, flags := range map[string]Settings{
		"no trust domain": {Duration: time.Hour},
		"no duration":     {TrustDomain: flagTD},
	} {
		if _, err := New(Options{Flags: flags}); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
}

// However many edits come, only the last maxPrevious settings are kept.
func TestPreviousIsBounded(t *testing.T) {
	tr, client := startConfig(t, nil, configConfigMap(shippedConfig()))
	cms := client.CoreV1().ConfigMaps(configName.Namespace)
	want := withIssuer(flagIssuer)
	for i := 1; i <= maxPrevious+4; i++ {
		data := shippedConfig()
		data[KeyDuration] = fmt.Sprintf("%dh", i+1)
		if _, err := cms.Update(t.Context(), configConfigMap(data), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		want.Duration = time.Duration(i+1) * time.Hour
		waitSettings(t, tr, want)
	}
	prev := tr.Previous(time.Now())
	if len(prev) != maxPrevious {
		t.Fatalf("Previous has %d, want %d", len(prev), maxPrevious)
	}
	if prev[0].Duration != time.Duration(maxPrevious+4)*time.Hour {
		t.Fatalf("newest previous %v, want %dh", prev[0].Duration, maxPrevious+4)
	}
}
