package server

import "time"

// LeaseLeft returns the time left on a lease as this member's lessor sees
// it, and false unless the member leads and has taken up its term.
func LeaseLeft(s *Server, id int64) (time.Duration, bool) {
	l := s.less
	l.mu.Lock()
	defer l.mu.Unlock()
	d, ok := l.deadline[id]
	if !ok || l.leaderFor == 0 || l.leaderFor != s.node.Term() {
		return 0, false
	}
	return time.Until(d), true
}

// LeaseCheckpointed returns the remaining TTL a handover recorded for a
// lease in this member's store (0: none).
func LeaseCheckpointed(s *Server, id int64) int64 {
	rem, _ := s.store.LeaseCheckpointedTTL(id)
	return rem
}
