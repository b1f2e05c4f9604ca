package fence

import (
	"errors"
	"testing"
)

func TestRegister(t *testing.T) {
	var r Register
	for _, w := range []struct {
		token int64
		ok    bool
	}{{5, true}, {5, true}, {9, true}, {7, false}, {9, true}, {12, true}, {1, false}} {
		err := r.Write(w.token, "v")
		if w.ok != (err == nil) || (!w.ok && !errors.Is(err, ErrStale)) {
			t.Errorf("Write(%d): %v, want accepted %v", w.token, err, w.ok)
		}
	}
	if _, tok := r.Read(); tok != 12 {
		t.Errorf("highest token %d, want 12", tok)
	}
	if h := r.History(); len(h) != 5 {
		t.Errorf("history %v, want 5 accepted writes", h)
	}
}
