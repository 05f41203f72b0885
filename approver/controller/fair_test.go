package controller

import (
	"fmt"
	"testing"

	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Namespaces take turns; within one, first in first out.
func TestFairQueueTakesTurns(t *testing.T) {
	q := newFairQueue()
	for _, item := range []string{"a/1", "a/2", "a/3", "b/1", "c/1", "b/2"} {
		q.Push(name(item))
	}
	var got []string
	for q.Len() > 0 {
		got = append(got, q.Pop().String())
	}
	want := "[a/1 b/1 c/1 a/2 b/2 a/3]"
	if fmt.Sprint(got) != want {
		t.Fatalf("popped %v, want %s", got, want)
	}
	if len(q.byNamespace) != 0 || len(q.turns) != 0 {
		t.Fatalf("left %v %v", q.byNamespace, q.turns)
	}
}

// Through the approver's work queue: with 10,000 requests of one namespace
// waiting, one from another namespace is worked on after at most one more
// of the flood.
func TestFloodFromOneNamespaceDelaysOthersByOne(t *testing.T) {
	q := workqueue.NewTypedWithConfig(workqueue.TypedQueueConfig[cache.ObjectName]{Queue: newFairQueue()})
	defer q.ShutDown()
	for i := range 10000 {
		q.Add(name(fmt.Sprintf("flood/junk-%d", i)))
	}
	first, _ := q.Get() // a worker is busy with the flood
	q.Add(name("team-a/web"))
	q.Add(first) // a retry of the one in progress waits its turn
	q.Done(first)
	next, _ := q.Get()
	if next != name("team-a/web") {
		q.Done(next)
		if next, _ = q.Get(); next != name("team-a/web") {
			t.Fatalf("second after the flood's first: %v, want team-a/web", next)
		}
	}
}

func name(s string) cache.ObjectName {
	n, err := cache.ParseObjectName(s)
	if err != nil {
		panic(err)
	}
	return n
}
