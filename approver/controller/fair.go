package controller

import "k8s.io/client-go/tools/cache"

// fairQueue is the work queue's storage: first in, first out within a
// namespace, and the namespaces served in turn, so that a flood from one
// namespace (anyone who may create requests there) delays the others by at
// most one decision each, not by the whole flood. The work queue calls it
// from one goroutine at a time, under its own lock.
type fairQueue struct {
	byNamespace map[string][]cache.ObjectName // each non-empty
	turns       []string                      // namespaces with items, next first
	len         int
}

func newFairQueue() *fairQueue {
	return &fairQueue{byNamespace: map[string][]cache.ObjectName{}}
}

// Touch: an item added again keeps its place.
func (q *fairQueue) Touch(cache.ObjectName) {}

func (q *fairQueue) Push(item cache.ObjectName) {
	items, waiting := q.byNamespace[item.Namespace]
	if !waiting {
		q.turns = append(q.turns, item.Namespace)
	}
	q.byNamespace[item.Namespace] = append(items, item)
	q.len++
}

func (q *fairQueue) Len() int { return q.len }

// Pop takes the oldest item of the namespace whose turn it is; the
// namespace goes to the back of the turns if it has more. The work queue
// pops only when Len is not 0.
func (q *fairQueue) Pop() cache.ObjectName {
	ns := q.turns[0]
	q.turns[0] = ""
	q.turns = q.turns[1:]
	items := q.byNamespace[ns]
	item := items[0]
	items[0] = cache.ObjectName{}
	if items = items[1:]; len(items) == 0 {
		delete(q.byNamespace, ns)
	} else {
		q.byNamespace[ns] = items
		q.turns = append(q.turns, ns)
	}
	q.len--
	return item
}
