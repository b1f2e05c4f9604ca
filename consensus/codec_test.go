package consensus

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
)

// ---- semantic comparison: nil and empty slices are the same value ----

func normIDs(s []NodeID) []NodeID {
	if len(s) == 0 {
		return nil
	}
	return s
}

func normBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

func normConfState(cs ConfState) ConfState {
	return ConfState{normIDs(cs.Voters), normIDs(cs.VotersOutgoing), normIDs(cs.Learners), normIDs(cs.LearnersNext), cs.AutoLeave}
}

func normConfChange(cc ConfChange) ConfChange {
	if len(cc.Changes) == 0 {
		cc.Changes = nil
	}
	cc.Context = normBytes(cc.Context)
	return cc
}

func normMeta(m SnapshotMeta) SnapshotMeta {
	m.ConfState = normConfState(m.ConfState)
	return m
}

func normEntry(e Entry) Entry {
	e.Data = normBytes(e.Data)
	return e
}

func normMessage(m Message) Message {
	var ents []Entry
	for _, e := range m.Entries {
		ents = append(ents, normEntry(e))
	}
	m.Entries = ents
	if m.Snapshot != nil {
		m.Snapshot = &Snapshot{Meta: normMeta(m.Snapshot.Meta), Data: normBytes(m.Snapshot.Data)}
	}
	m.Context = normBytes(m.Context)
	return m
}

func sameMessage(a, b Message) bool { return reflect.DeepEqual(normMessage(a), normMessage(b)) }

// ---- fixtures ----

var testConfStates = []ConfState{
	{},
	{Voters: []NodeID{}, Learners: []NodeID{}},
	{Voters: []NodeID{1}},
	{Voters: []NodeID{1, 2, 3}, Learners: []NodeID{4}},
	{Voters: []NodeID{1, 2, 4}, VotersOutgoing: []NodeID{1, 2, 3}, Learners: []NodeID{5}, LearnersNext: []NodeID{3}, AutoLeave: true},
	{Voters: []NodeID{math.MaxUint64, 1 << 63, 127, 128}, AutoLeave: true},
}

var testEntries = []Entry{
	{},
	{Index: 1, Epoch: 1, Type: EntryNoop},
	{Index: 2, Epoch: 1, Type: EntryNormal, Data: []byte("put k v")},
	{Index: 3, Epoch: 2, Type: EntryNormal, Data: []byte{}},
	{Index: 127, Epoch: 128, Type: EntryConfChange, Data: ConfChange{Changes: []ConfChangeSingle{{AddVoter, 4}}}.Marshal()},
	{Index: math.MaxUint64, Epoch: math.MaxUint64, Type: EntryNormal, Data: bytes.Repeat([]byte{0xff}, 300)},
}

func testMessages() []Message {
	ents := make([]Entry, 8)
	for i := range ents {
		ents[i] = Entry{Index: uint64(100 + i), Epoch: 7, Data: bytes.Repeat([]byte{byte(i)}, i*40)}
	}
	return []Message{
		{},
		{Type: MsgHup},
		{Type: MsgHeartbeat, From: 1, To: 2, Epoch: 3, Commit: 10, Context: []byte("read-1")},
		{Type: MsgApp, From: 1, To: 3, Epoch: 7, LogEpoch: 6, Index: 99, Commit: 98, Entries: ents},
		{Type: MsgApp, From: 1, To: 3, Epoch: 7, Entries: []Entry{}},
		{Type: MsgAppResp, From: 3, To: 1, Epoch: 7, Index: 50, Reject: true, RejectHint: 42},
		{Type: MsgSnap, From: 1, To: 2, Epoch: 9, Snapshot: &Snapshot{}},
		{Type: MsgSnap, From: 1, To: 2, Epoch: 9, Snapshot: &Snapshot{Meta: SnapshotMeta{Index: 1000, Epoch: 8, ConfState: testConfStates[4]}}},
		{Type: MsgSnap, From: 1, To: 2, Epoch: 9, Snapshot: &Snapshot{Meta: SnapshotMeta{Index: 5, Epoch: 1}, Data: []byte("state machine image")}},
		{Type: MsgVote, From: 2, To: 1, Epoch: 4, LogEpoch: 3, Index: 77, Context: []byte("transfer")},
		{Type: MsgPromise, From: math.MaxUint64, To: math.MaxUint64 - 1, Epoch: math.MaxUint64, LogEpoch: math.MaxUint64,
			Index: math.MaxUint64, Commit: math.MaxUint64, Reject: true, RejectHint: math.MaxUint64,
			Entries: testEntries, Snapshot: &Snapshot{Meta: SnapshotMeta{Index: math.MaxUint64}, Data: []byte{0}}, Context: []byte{0}},
		{Type: MsgNack, From: 4, To: 5, Epoch: 12},
		{Type: MsgDecide, From: 1, To: 2, Epoch: 1<<24 | 1, Index: 100, Commit: 107, LogEpoch: 3, Entries: ents},
		{Type: MsgDecideResp, From: 2, To: 1, Epoch: 1<<24 | 1, Index: 107, LogEpoch: 3},
		{Type: MsgDecideResp, From: 2, To: 1, Epoch: 2<<24 | 3, Reject: true},
	}
}

// ---- round trips ----

func TestConfChangeRoundTrip(t *testing.T) {
	for i, cc := range []ConfChange{
		{},
		{Changes: []ConfChangeSingle{}, Context: []byte{}},
		{Changes: []ConfChangeSingle{{AddVoter, 4}}},
		{Changes: []ConfChangeSingle{{AddVoter, 4}, {AddLearner, 5}, {RemoveNode, 1}}, Context: []byte("ctx")},
		{Changes: []ConfChangeSingle{{RemoveNode, math.MaxUint64}}, Context: bytes.Repeat([]byte("x"), 200)},
	} {
		b := cc.Marshal()
		if b[0] != codecVersion {
			t.Fatalf("#%d: leading byte %d, want version %d", i, b[0], codecVersion)
		}
		got, err := UnmarshalConfChange(b)
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		if !reflect.DeepEqual(normConfChange(got), normConfChange(cc)) {
			t.Fatalf("#%d: got %+v, want %+v", i, got, cc)
		}
		if got.LeaveJoint() != cc.LeaveJoint() {
			t.Fatalf("#%d: LeaveJoint changed", i)
		}
	}
}

func TestConfStateRoundTrip(t *testing.T) {
	for i, cs := range testConfStates {
		b := cs.Marshal()
		if b[0] != codecVersion {
			t.Fatalf("#%d: leading byte %d, want version %d", i, b[0], codecVersion)
		}
		got, err := UnmarshalConfState(b)
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		if !reflect.DeepEqual(got, normConfState(cs)) {
			t.Fatalf("#%d: got %v, want %v", i, got, cs)
		}
	}
}

func TestHardStateRoundTrip(t *testing.T) {
	for i, h := range []HardState{
		{},
		{Epoch: 1},
		{Epoch: 5, Vote: 3, Commit: 40},
		{Epoch: 128, Vote: 127, Commit: 16384},
		{Epoch: math.MaxUint64, Vote: math.MaxUint64, Commit: math.MaxUint64},
	} {
		b := h.Marshal()
		if b[0] != codecVersion {
			t.Fatalf("#%d: leading byte %d, want version %d", i, b[0], codecVersion)
		}
		if len(b) != HardStateLen(&h) {
			t.Fatalf("#%d: %d bytes, HardStateLen says %d", i, len(b), HardStateLen(&h))
		}
		if !bytes.Equal(b, AppendHardState([]byte{}, &h)) {
			t.Fatalf("#%d: Marshal and AppendHardState differ", i)
		}
		got, err := UnmarshalHardState(b)
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		if got != h {
			t.Fatalf("#%d: got %+v, want %+v", i, got, h)
		}
	}
}

func TestSnapshotMetaRoundTrip(t *testing.T) {
	for i, cs := range testConfStates {
		m := SnapshotMeta{Index: uint64(i) * 1000, Epoch: uint64(i), ConfState: cs}
		b := m.Marshal()
		if b[0] != codecVersion {
			t.Fatalf("#%d: leading byte %d, want version %d", i, b[0], codecVersion)
		}
		got, err := UnmarshalSnapshotMeta(b)
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		if !reflect.DeepEqual(got, normMeta(m)) {
			t.Fatalf("#%d: got %+v, want %+v", i, got, m)
		}
	}
}

func TestEntryRoundTrip(t *testing.T) {
	var stream []byte
	for i := range testEntries {
		e := &testEntries[i]
		b := e.Marshal()
		if b[0] != codecVersion {
			t.Fatalf("#%d: leading byte %d, want version %d", i, b[0], codecVersion)
		}
		if !bytes.Equal(b, AppendEntry(nil, e)) {
			t.Fatalf("#%d: Marshal and AppendEntry differ", i)
		}
		if len(b) != EntryLen(e) {
			t.Fatalf("#%d: %d bytes, EntryLen says %d", i, len(b), EntryLen(e))
		}
		got, err := UnmarshalEntry(b)
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		if !reflect.DeepEqual(got, normEntry(*e)) {
			t.Fatalf("#%d: got %v, want %v", i, got, e)
		}
		stream = AppendEntry(stream, e)
	}
	// A sequence of appended entries reads back one by one.
	for i := range testEntries {
		got, n, err := DecodeEntry(stream)
		if err != nil {
			t.Fatalf("stream #%d: %v", i, err)
		}
		if !reflect.DeepEqual(got, normEntry(testEntries[i])) {
			t.Fatalf("stream #%d: got %v, want %v", i, got, testEntries[i])
		}
		stream = stream[n:]
	}
	if len(stream) != 0 {
		t.Fatalf("%d bytes left after the last entry", len(stream))
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for i, m := range testMessages() {
		b := m.Marshal()
		if b[0] != codecVersion {
			t.Fatalf("#%d: leading byte %d, want version %d", i, b[0], codecVersion)
		}
		if len(b) != messageLen(&m) || cap(b) != len(b) {
			t.Fatalf("#%d: len %d cap %d, messageLen %d", i, len(b), cap(b), messageLen(&m))
		}
		got, err := UnmarshalMessage(b)
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		if !sameMessage(got, m) {
			t.Fatalf("#%d: got %v, want %v", i, got, m)
		}
		if (got.Snapshot == nil) != (m.Snapshot == nil) {
			t.Fatalf("#%d: snapshot presence changed: got %v, want %v", i, got.Snapshot, m.Snapshot)
		}
		// AppendMessage keeps what dst held.
		prefix := []byte("prefix")
		out := AppendMessage(append([]byte(nil), prefix...), &m)
		if !bytes.HasPrefix(out, prefix) || !bytes.Equal(out[len(prefix):], b) {
			t.Fatalf("#%d: AppendMessage lost its prefix or differs from Marshal", i)
		}
	}
}

// TestDecodedBytesDoNotAlias: decoded slices survive the caller reusing its
// buffer, and appending to one never overwrites its neighbour.
func TestDecodedBytesDoNotAlias(t *testing.T) {
	m := Message{Type: MsgApp, Entries: []Entry{{Index: 1, Data: []byte("aa")}, {Index: 2, Data: []byte("bb")}}, Context: []byte("cc")}
	b := m.Marshal()
	got, err := UnmarshalMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0xee
	}
	_ = append(got.Entries[0].Data, 'X', 'X', 'X')
	if string(got.Entries[0].Data) != "aa" || string(got.Entries[1].Data) != "bb" || string(got.Context) != "cc" {
		t.Fatalf("decoded bytes changed: %q %q %q", got.Entries[0].Data, got.Entries[1].Data, got.Context)
	}

	e := Entry{Index: 1, Data: []byte("dd")}
	eb := e.Marshal()
	ge, err := UnmarshalEntry(eb)
	if err != nil {
		t.Fatal(err)
	}
	eb[len(eb)-1] = 'Z'
	if string(ge.Data) != "dd" {
		t.Fatalf("entry data aliases its input: %q", ge.Data)
	}
}

// TestUnmarshalMessageAllocs: decoding a MsgApp costs a constant number of
// allocations, not one per entry.
func TestUnmarshalMessageAllocs(t *testing.T) {
	m := benchMsgApp()
	b := m.Marshal()
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := UnmarshalMessage(b); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 2 {
		t.Fatalf("UnmarshalMessage of %d entries: %v allocs, want at most 2", len(m.Entries), allocs)
	}
	allocs = testing.AllocsPerRun(20, func() { _ = m.Marshal() })
	if allocs > 1 {
		t.Fatalf("Message.Marshal: %v allocs, want 1", allocs)
	}
}

// ---- corruption ----

// decoders maps each type's encoding of a sample value to its decoder, so
// the corruption tests cover all of them.
type decodeCase struct {
	name   string
	enc    []byte
	decode func([]byte) error
}

func decodeCases() []decodeCase {
	var cs []decodeCase
	add := func(name string, enc []byte, decode func([]byte) error) {
		cs = append(cs, decodeCase{name, enc, decode})
	}
	decCC := func(b []byte) error { _, err := UnmarshalConfChange(b); return err }
	decCS := func(b []byte) error { _, err := UnmarshalConfState(b); return err }
	decHS := func(b []byte) error { _, err := UnmarshalHardState(b); return err }
	decSM := func(b []byte) error { _, err := UnmarshalSnapshotMeta(b); return err }
	decE := func(b []byte) error { _, err := UnmarshalEntry(b); return err }
	decM := func(b []byte) error { _, err := UnmarshalMessage(b); return err }

	add("confchange", ConfChange{Changes: []ConfChangeSingle{{AddVoter, 300}, {RemoveNode, 2}}, Context: []byte("ctx")}.Marshal(), decCC)
	add("confchange/empty", ConfChange{}.Marshal(), decCC)
	for i, c := range testConfStates {
		add("confstate/"+string(rune('a'+i)), c.Marshal(), decCS)
		add("snapshotmeta/"+string(rune('a'+i)), SnapshotMeta{Index: 1 << 40, Epoch: 3, ConfState: c}.Marshal(), decSM)
	}
	add("hardstate", HardState{Epoch: 1 << 20, Vote: 3, Commit: 1 << 33}.Marshal(), decHS)
	add("hardstate/zero", HardState{}.Marshal(), decHS)
	for i := range testEntries {
		add("entry/"+string(rune('a'+i)), testEntries[i].Marshal(), decE)
	}
	for i, m := range testMessages() {
		add("message/"+string(rune('a'+i)), m.Marshal(), decM)
	}
	return cs
}

func wantCorrupt(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: decoded without error", what)
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("%s: error %v does not wrap ErrCorrupt", what, err)
	}
	if !strings.Contains(err.Error(), "offset") {
		t.Fatalf("%s: error %q does not name an offset", what, err)
	}
}

func TestDecodeTruncated(t *testing.T) {
	for _, c := range decodeCases() {
		if err := c.decode(c.enc); err != nil {
			t.Fatalf("%s: the intact encoding fails: %v", c.name, err)
		}
		for n := range len(c.enc) {
			wantCorrupt(t, c.name+" truncated", c.decode(c.enc[:n]))
		}
	}
	// DecodeEntry, which allows trailing bytes, still refuses every prefix.
	for i := range testEntries {
		b := testEntries[i].Marshal()
		for n := range len(b) {
			_, used, err := DecodeEntry(b[:n])
			wantCorrupt(t, "DecodeEntry truncated", err)
			if used != 0 {
				t.Fatalf("DecodeEntry reported %d bytes used on error", used)
			}
		}
	}
}

func TestDecodeBadVersion(t *testing.T) {
	for _, c := range decodeCases() {
		for _, v := range []byte{0, 2, 0x80, 0xff} {
			b := append([]byte(nil), c.enc...)
			b[0] = v
			err := c.decode(b)
			wantCorrupt(t, c.name+" bad version", err)
			if !strings.Contains(err.Error(), "unknown version") {
				t.Fatalf("%s: error %q does not name the version", c.name, err)
			}
		}
	}
	if _, _, err := DecodeEntry([]byte{2, 1, 1, 0, 0}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("DecodeEntry with version 2: %v", err)
	}
}

func TestDecodeTrailingBytes(t *testing.T) {
	for _, c := range decodeCases() {
		for _, tail := range [][]byte{{0}, {1}, {0xff, 0xff}} {
			err := c.decode(append(append([]byte(nil), c.enc...), tail...))
			wantCorrupt(t, c.name+" trailing", err)
			if !strings.Contains(err.Error(), "trailing") {
				t.Fatalf("%s: error %q does not say trailing", c.name, err)
			}
		}
	}
	// DecodeEntry leaves what follows the entry alone.
	b := append(testEntries[2].Marshal(), 0xde, 0xad)
	e, n, err := DecodeEntry(b)
	if err != nil || n != len(b)-2 || !reflect.DeepEqual(e, testEntries[2]) {
		t.Fatalf("DecodeEntry with a tail: %v, %d, %v", e, n, err)
	}
}

// TestDecodeHostile feeds hand-built encodings that lie about lengths and
// counts or carry values outside their type.
func TestDecodeHostile(t *testing.T) {
	huge := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01} // MaxUint64
	// A message header up to and including the reject hint: version, MsgApp,
	// from 1, to 2, epoch, logEpoch, index, commit 0, reject 0, hint 0.
	hdr := []byte{1, byte(MsgApp), 1, 2, 0, 0, 0, 0, 0, 0}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name   string
		decode func([]byte) error
		b      []byte
		want   string
	}{
		{"empty message", decM, nil, "missing version"},
		{"empty hardstate", decHS, []byte{}, "missing version"},
		{"entry count MaxUint64", decM, cat(hdr, huge), "entry count"},
		{"entry count 1<<40", decM, cat(hdr, []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x20}), "entry count"},
		{"entry count above bytes/4", decM, cat(hdr, []byte{3}, make([]byte, 11)), "entry count"},
		{"entry data length MaxUint64", decM, cat(hdr, []byte{1, 1, 1, 0}, huge), "entry data length"},
		{"entry data length past end", decM, cat(hdr, []byte{1, 1, 1, 0, 5, 'a', 'b'}), "exceeds 2 remaining"},
		{"unknown entry type", decM, cat(hdr, []byte{1, 1, 1, 9, 0, 0, 0}), "unknown entry type 9"},
		{"unknown message type", decM, []byte{1, 99, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0}, "unknown message type 99"},
		{"reject flag 2", decM, []byte{1, byte(MsgApp), 1, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0}, "reject flag is 2"},
		{"snapshot presence 7", decM, cat(hdr, []byte{0, 7, 0}), "snapshot presence is 7"},
		{"snapshot data length past end", decM, cat(hdr, []byte{0, 1, 1, 1, 0, 0, 0, 0, 0, 200}), "snapshot data length"},
		{"context length MaxUint64", decM, cat(hdr, []byte{0, 0}, huge), "context length"},
		{"varint overflow", decHS, []byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0}, "overflows"},
		{"varint too long", decHS, cat([]byte{1}, bytes.Repeat([]byte{0x80}, 11), []byte{0, 0}), "overflows"},
		{"non-minimal varint", decHS, []byte{1, 0x80, 0x00, 0, 0}, "non-minimal"},
		{"non-minimal varint 3 bytes", decHS, []byte{1, 0, 0x81, 0x80, 0x00, 0}, "non-minimal"},
		{"voter count MaxUint64", decCS, cat([]byte{1}, huge), "voter count"},
		{"voter count past end", decCS, []byte{1, 5, 1, 2}, "voter count 5 exceeds"},
		{"auto-leave 2", decCS, []byte{1, 0, 0, 0, 0, 2}, "auto-leave flag is 2"},
		{"change count above bytes/2", decCC, []byte{1, 2, 0, 1, 0}, "change count"},
		{"unknown change type", decCC, []byte{1, 1, 3, 1, 0}, "unknown change type 3"},
		{"confchange context past end", decCC, []byte{1, 0, 4, 'a'}, "context length 4 exceeds 1"},
		{"snapshotmeta learners past end", decSM, []byte{1, 1, 1, 0, 0, 9}, "learner count"},
	} {
		err := tc.decode(tc.b)
		wantCorrupt(t, tc.name, err)
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not contain %q", tc.name, err, tc.want)
		}
	}
}

func decCC(b []byte) error { _, err := UnmarshalConfChange(b); return err }
func decCS(b []byte) error { _, err := UnmarshalConfState(b); return err }
func decHS(b []byte) error { _, err := UnmarshalHardState(b); return err }
func decSM(b []byte) error { _, err := UnmarshalSnapshotMeta(b); return err }
func decM(b []byte) error  { _, err := UnmarshalMessage(b); return err }

// ---- fuzzing ----

// knownMessageTypes lists the defined message types, so fuzzed bytes map to
// one.
func knownMessageTypes() []MessageType {
	var ts []MessageType
	for t := range 256 {
		if MessageType(t).Known() {
			ts = append(ts, MessageType(t))
		}
	}
	return ts
}

// fuzzEntries builds entries from spec: each entry takes one byte whose low
// bits give its type and data length, then that many bytes of data.
func fuzzEntries(spec []byte, firstIndex, epoch uint64) []Entry {
	var ents []Entry
	for len(spec) > 0 && len(ents) < 256 {
		h := spec[0]
		spec = spec[1:]
		n := min(int(h>>2), len(spec))
		e := Entry{Index: firstIndex + uint64(len(ents)), Epoch: epoch, Type: EntryType(h&3) % 3}
		if h&3 != 3 {
			e.Data = spec[:n:n]
		}
		spec = spec[n:]
		ents = append(ents, e)
	}
	return ents
}

func fuzzIDs(spec []byte, scale uint64) []NodeID {
	if len(spec) == 0 {
		return nil
	}
	ids := make([]NodeID, len(spec))
	for i, c := range spec {
		ids[i] = NodeID(uint64(c) * scale)
	}
	return ids
}

func FuzzMessageRoundTrip(f *testing.F) {
	for _, m := range testMessages() {
		var spec []byte
		for _, e := range m.Entries {
			n := min(len(e.Data), 63)
			spec = append(spec, byte(n<<2)|byte(e.Type))
			spec = append(spec, e.Data[:n]...)
		}
		var snapIndex uint64
		var voters, snapData []byte
		if m.Snapshot != nil {
			snapIndex = m.Snapshot.Meta.Index
			snapData = m.Snapshot.Data
			for _, v := range m.Snapshot.Meta.ConfState.Voters {
				voters = append(voters, byte(v))
			}
		}
		f.Add(uint8(m.Type), uint64(m.From), uint64(m.To), m.Epoch, m.LogEpoch, m.Index, m.Commit,
			m.Reject, m.RejectHint, spec, m.Snapshot != nil, snapIndex, voters, snapData, m.Context)
	}
	types := knownMessageTypes()
	f.Fuzz(func(t *testing.T, typ uint8, from, to, epoch, logEpoch, index, commit uint64,
		reject bool, hint uint64, entrySpec []byte, hasSnap bool, snapIndex uint64, voters, snapData, ctx []byte) {
		m := Message{
			Type: types[int(typ)%len(types)], From: NodeID(from), To: NodeID(to),
			Epoch: epoch, LogEpoch: logEpoch, Index: index, Commit: commit,
			Reject: reject, RejectHint: hint,
			Entries: fuzzEntries(entrySpec, index+1, epoch),
			Context: ctx,
		}
		if hasSnap {
			half := len(voters) / 2
			m.Snapshot = &Snapshot{
				Meta: SnapshotMeta{Index: snapIndex, Epoch: logEpoch, ConfState: ConfState{
					Voters:         fuzzIDs(voters[:half], 1),
					VotersOutgoing: fuzzIDs(voters[half:], 1<<56),
					Learners:       fuzzIDs(entrySpec[:min(len(entrySpec), 3)], 1<<14),
					AutoLeave:      snapIndex&1 == 1,
				}},
				Data: snapData,
			}
		}
		b := m.Marshal()
		if len(b) != messageLen(&m) {
			t.Fatalf("encoded %d bytes, messageLen says %d", len(b), messageLen(&m))
		}
		got, err := UnmarshalMessage(b)
		if err != nil {
			t.Fatalf("decode %v: %v", m, err)
		}
		if !sameMessage(got, m) {
			t.Fatalf("round trip changed the message:\n got %+v\nwant %+v", got, m)
		}
		if !bytes.Equal(got.Marshal(), b) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func FuzzUnmarshalMessage(f *testing.F) {
	for _, m := range testMessages() {
		b := m.Marshal()
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte{2, byte(MsgApp)})
	f.Add([]byte{1, byte(MsgApp), 1, 2, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{1, byte(MsgSnap), 1, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := UnmarshalMessage(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		// Every value has one encoding, so what decoded re-encodes to the
		// very same bytes, and decodes again to the same message.
		re := m.Marshal()
		if !bytes.Equal(re, b) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, re)
		}
		m2, err := UnmarshalMessage(re)
		if err != nil {
			t.Fatalf("re-encoded message fails to decode: %v", err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("decode is not stable:\n%+v\n%+v", m, m2)
		}
	})
}

// FuzzUnmarshalOthers runs arbitrary bytes through every other decoder: none
// may panic, and what decodes must re-encode to the same bytes.
func FuzzUnmarshalOthers(f *testing.F) {
	for _, c := range decodeCases() {
		f.Add(c.enc)
	}
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(name string, err error, re func() []byte) {
			if err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("%s: error %v does not wrap ErrCorrupt", name, err)
				}
				return
			}
			if out := re(); !bytes.Equal(out, b) {
				t.Fatalf("%s: re-encoding differs:\n in %x\nout %x", name, b, out)
			}
		}
		cc, err := UnmarshalConfChange(b)
		check("ConfChange", err, cc.Marshal)
		cs, err := UnmarshalConfState(b)
		check("ConfState", err, cs.Marshal)
		hs, err := UnmarshalHardState(b)
		check("HardState", err, hs.Marshal)
		sm, err := UnmarshalSnapshotMeta(b)
		check("SnapshotMeta", err, sm.Marshal)
		e, err := UnmarshalEntry(b)
		check("Entry", err, e.Marshal)
		e2, n, err := DecodeEntry(b)
		if err == nil {
			if n <= 0 || n > len(b) {
				t.Fatalf("DecodeEntry used %d of %d bytes", n, len(b))
			}
			if out := AppendEntry(nil, &e2); !bytes.Equal(out, b[:n]) {
				t.Fatalf("DecodeEntry: re-encoding differs")
			}
		} else if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("DecodeEntry: error %v does not wrap ErrCorrupt", err)
		}
	})
}

// TestDecideRespType: the Paxos answer to a Decide is a known response type
// with a stable wire value and name.
func TestDecideRespType(t *testing.T) {
	if MsgDecideResp != 46 || !MsgDecideResp.Known() || !MsgDecideResp.IsResponse() || MsgDecideResp.IsLocal() {
		t.Fatalf("MsgDecideResp: value %d known=%v response=%v local=%v", MsgDecideResp, MsgDecideResp.Known(), MsgDecideResp.IsResponse(), MsgDecideResp.IsLocal())
	}
	if got := MsgDecideResp.String(); got != "MsgDecideResp" {
		t.Fatalf("name %q", got)
	}
	b := (&Message{Type: MsgDecideResp, From: 3, To: 1, Epoch: 9, Index: 4}).Marshal()
	m, err := UnmarshalMessage(b)
	if err != nil || m.Type != MsgDecideResp || m.Index != 4 {
		t.Fatalf("round trip: %v %v", m, err)
	}
}
