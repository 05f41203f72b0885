//go:build integration

package e2e_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// BenchmarkPodStartup measures, on the real node, pod creation → the pod
// Ready, which for an SVID pod means its volume is mounted with tls.crt,
// tls.key and ca.crt (the kubelet starts no container before), for 20 pods one
// by one and 20 at once; next to the same pods without the CSI volume in the
// same run (the floor: scheduling, sandbox, container). Every SVID pod's
// files are then read from inside its container. Run with -benchtime=1x.
func BenchmarkPodStartup(b *testing.B) {
	const pods = 20
	for _, c := range []struct {
		name   string
		svid   bool
		atOnce bool
	}{
		{"floor-no-volume-1by1", false, false},
		{"svid-1by1", true, false},
		{"floor-no-volume-20", false, true},
		{"svid-20", true, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			ns := workloadNamespace(ctx, b, "bench")
			spec := bed.Node.PodSpec(nil)
			if c.svid {
				spec = svidPodSpec(nil, nil)
			}
			ready := watchReady(ctx, b, ns)
			created := make([]time.Time, pods)
			create := func(i int) error {
				pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: ns}, Spec: spec}
				created[i] = time.Now()
				_, err := bed.Kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
				return err
			}
			start := time.Now()
			if c.atOnce {
				errs := make([]error, pods)
				var wg sync.WaitGroup
				for i := range pods {
					wg.Go(func() { errs[i] = create(i) })
				}
				wg.Wait()
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			lat := make([]time.Duration, pods)
			for i := range pods {
				if !c.atOnce {
					if err := create(i); err != nil {
						b.Fatal(err)
					}
				}
				at, err := ready.wait(ctx, fmt.Sprintf("p%d", i))
				if err != nil {
					b.Fatalf("%v\nevents:\n%s", err, bed.PodEvents(ctx, ns, fmt.Sprintf("p%d", i)))
				}
				lat[i] = at.Sub(created[i])
			}
			total := time.Since(start)
			if c.svid {
				b.StopTimer()
				for i := range pods {
					p, err := bed.Kube.CoreV1().Pods(ns).Get(ctx, fmt.Sprintf("p%d", i), metav1.GetOptions{})
					if err != nil {
						b.Fatal(err)
					}
					readSVID(ctx, b, p)
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
			b.ReportMetric(float64(lat[(len(lat)*99)/100].Milliseconds()), "p99-ms")
			b.ReportMetric(total.Seconds(), "all-s")
			// The next case starts on an empty node.
			if err := bed.Kube.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
				b.Fatal(err)
			}
			if err := waitNoPods(ctx, ns); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// readyWatch records when each pod of a namespace was first seen Ready.
type readyWatch struct {
	mu      sync.Mutex
	at      map[string]time.Time
	changed chan struct{}
}

func watchReady(ctx context.Context, b *testing.B, ns string) *readyWatch {
	b.Helper()
	w, err := bed.Kube.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	rw := &readyWatch{at: map[string]time.Time{}, changed: make(chan struct{}, 1)}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Deleted || !ready(p) {
				continue
			}
			rw.mu.Lock()
			if _, seen := rw.at[p.Name]; !seen {
				rw.at[p.Name] = time.Now()
			}
			rw.mu.Unlock()
			select {
			case rw.changed <- struct{}{}:
			default:
			}
		}
	}()
	return rw
}

func (rw *readyWatch) wait(ctx context.Context, name string) (time.Time, error) {
	for {
		rw.mu.Lock()
		at, ok := rw.at[name]
		rw.mu.Unlock()
		if ok {
			return at, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("pod %s never ready: %w", name, ctx.Err())
		case <-rw.changed:
		case <-time.After(time.Second):
		}
	}
}

func waitNoPods(ctx context.Context, ns string) error {
	for {
		list, err := bed.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err == nil && len(list.Items) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pods of %s never gone: %w", ns, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}
