package spiffe

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A list that keeps only some requests reads pages, keeps what keep
// returns, and reports the snapshot of the first page.
func TestListKeptPages(t *testing.T) {
	var asked []metav1.ListOptions
	pages := 3
	list := func(_ context.Context, o metav1.ListOptions) (*cmapi.CertificateRequestList, error) {
		asked = append(asked, o)
		n := len(asked)
		page := &cmapi.CertificateRequestList{ListMeta: metav1.ListMeta{ResourceVersion: strconv.Itoa(100 + n)}}
		for i := range 4 {
			page.Items = append(page.Items, cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Name: strconv.Itoa(n*10 + i)}})
		}
		if n < pages {
			page.Continue = "next-" + strconv.Itoa(n)
		}
		return page, nil
	}
	keepEven := func(cr *cmapi.CertificateRequest) (*cmapi.CertificateRequest, bool) {
		i, _ := strconv.Atoi(cr.Name)
		return &cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Name: "kept-" + cr.Name}}, i%2 == 0
	}
	got, err := listKept(t.Context(), list, metav1.ListOptions{ResourceVersion: "0", LabelSelector: "a=b"}, keepEven)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, cr := range got.Items {
		names = append(names, cr.Name)
	}
	if want := "[kept-10 kept-12 kept-20 kept-22 kept-30 kept-32]"; fmt.Sprint(names) != want {
		t.Errorf("kept %v, want %s", names, want)
	}
	if got.ResourceVersion != "101" {
		t.Errorf("resourceVersion %q, want the first page's", got.ResourceVersion)
	}
	if len(asked) != pages {
		t.Fatalf("%d pages read, want %d", len(asked), pages)
	}
	for i, o := range asked {
		wantContinue := ""
		if i > 0 {
			wantContinue = "next-" + strconv.Itoa(i)
		}
		if o.ResourceVersion != "" || o.Limit != listPage || o.Continue != wantContinue || o.LabelSelector != "a=b" {
			t.Errorf("page %d asked %+v: want a consistent read of %d, continue %q, the selector kept", i, o, listPage, wantContinue)
		}
	}

	fail := errors.New("boom")
	if _, err := listKept(t.Context(), func(context.Context, metav1.ListOptions) (*cmapi.CertificateRequestList, error) {
		return nil, fail
	}, metav1.ListOptions{}, keepEven); !errors.Is(err, fail) {
		t.Errorf("error %v, want it wrapped", err)
	}
}
