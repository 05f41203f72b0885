package spiffe

import (
	"context"
	"fmt"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// listPage is the page size of a list that keeps only what it needs.
const listPage = 500

// RequestListWatch lists and watches the CertificateRequests of every
// namespace that match a label selector, filtered by the API server. The
// client tells the reflector whether it can stream the initial list (one
// object at a time, not one response holding all of them).
//
// With keep, a list (when the API server cannot stream one) is read in
// pages of 500 from etcd, and of each page only what keep returns is kept
// (false: left out): memory holds one page and what is kept, not every
// matching request at once, which anyone who may create requests can make
// large. The list is a consistent read, never older than what the reflector
// asked for.
func RequestListWatch(client cmclient.Interface, selector string, keep func(*cmapi.CertificateRequest) (*cmapi.CertificateRequest, bool)) cache.ListerWatcher {
	crs := client.CertmanagerV1().CertificateRequests(metav1.NamespaceAll)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			if keep == nil {
				return crs.List(ctx, o)
			}
			return listKept(ctx, crs.List, o, keep)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return crs.Watch(ctx, o)
		},
	}
	return cache.ToListWatcherWithWatchListSemantics(lw, client)
}

func listKept(ctx context.Context, list func(context.Context, metav1.ListOptions) (*cmapi.CertificateRequestList, error),
	o metav1.ListOptions, keep func(*cmapi.CertificateRequest) (*cmapi.CertificateRequest, bool)) (*cmapi.CertificateRequestList, error) {
	o.ResourceVersion, o.ResourceVersionMatch, o.Limit, o.Continue = "", "", listPage, ""
	out := &cmapi.CertificateRequestList{}
	for first := true; first || o.Continue != ""; first = false {
		page, err := list(ctx, o)
		if err != nil {
			return nil, fmt.Errorf("list CertificateRequests: %w", err)
		}
		if first {
			out.TypeMeta, out.ResourceVersion = page.TypeMeta, page.ResourceVersion
		}
		for i := range page.Items {
			if cr, ok := keep(&page.Items[i]); ok {
				out.Items = append(out.Items, *cr)
			}
		}
		o.Continue = page.Continue
	}
	return out, nil
}
