package paxos

import "fmt"

// slotRing holds one value per slot for the consecutive slots first,
// first+1, …, first+n-1: the leader's window of slots in flight. It is a
// ring over one buffer, so a pipeline that proposes and decides at the same
// pace allocates nothing; the buffer grows (doubling) only when the window
// does, and the window is bounded by MaxInflightSlots.
type slotRing[T any] struct {
	buf   []T
	head  int    // position in buf of slot first
	n     int    // slots held
	first uint64 // slot of buf[head]; meaningful when n > 0
}

// end is one past the last slot held.
func (r *slotRing[T]) end() uint64 { return r.first + uint64(r.n) }

// at returns the value of slot s, or nil when s is not held.
func (r *slotRing[T]) at(s uint64) *T {
	if r.n == 0 || s < r.first || s >= r.end() {
		return nil
	}
	return &r.buf[(r.head+int(s-r.first))%len(r.buf)]
}

// push makes room for slot s and returns its (zero) value. Slots are pushed
// in increasing order; slots skipped between the last one and s are held
// as zero values.
func (r *slotRing[T]) push(s uint64) *T {
	if r.n == 0 {
		r.head, r.first = 0, s
	}
	if s < r.end() {
		panic(fmt.Sprintf("paxos: slot %d pushed behind the window [%d, %d)", s, r.first, r.end()))
	}
	for r.end() <= s {
		if r.n == len(r.buf) {
			r.grow()
		}
		var zero T
		r.buf[(r.head+r.n)%len(r.buf)] = zero
		r.n++
	}
	return r.at(s)
}

func (r *slotRing[T]) grow() {
	buf := make([]T, max(16, 2*len(r.buf)))
	for i := range r.n {
		buf[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = buf, 0
}

// dropThrough forgets every slot at or below s, zeroing what they held so
// that no payload stays reachable.
func (r *slotRing[T]) dropThrough(s uint64) {
	var zero T
	for r.n > 0 && r.first <= s {
		r.buf[r.head] = zero
		r.head = (r.head + 1) % len(r.buf)
		r.first++
		r.n--
	}
}

// reset forgets every slot, keeping the buffer.
func (r *slotRing[T]) reset() {
	clear(r.buf)
	r.head, r.n, r.first = 0, 0, 0
}
