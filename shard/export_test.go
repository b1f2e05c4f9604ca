package shard

// SetStaleMapForTest puts m back as h's map, as if h had not heard of any
// change since m: the router's view of a host that is behind.
func (h *Host) SetStaleMapForTest(m Map) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.m = m
}
