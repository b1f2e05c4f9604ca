package consensus

import (
	"bytes"
	"encoding/gob"
	"encoding/json"
	"io"
	"testing"
)

// benchMsgApp is a typical append: 64 entries of 256 bytes each, at a
// realistic position in a long-lived log.
func benchMsgApp() Message {
	ents := make([]Entry, 64)
	for i := range ents {
		data := make([]byte, 256)
		for j := range data {
			data[j] = byte(i*31 + j)
		}
		ents[i] = Entry{Index: 1_000_001 + uint64(i), Epoch: 42, Type: EntryNormal, Data: data}
	}
	return Message{
		Type: MsgApp, From: 1, To: 3, Epoch: 42,
		LogEpoch: 42, Index: 1_000_000, Commit: 999_990,
		Entries: ents,
	}
}

// BenchmarkMsgApp compares the hand-written codec with encoding/gob and
// encoding/json on benchMsgApp. Every encoder reuses its output buffer.
//
// gob appears twice. "gob" encodes each message with a fresh Encoder, as a
// self-describing record (a WAL entry, one RPC) must, and so carries gob's
// type descriptions every time. "gob-stream" is gob's best case, one
// long-lived Encoder and Decoder per connection that describe the types once:
// its bytes/msg excludes the one-off type descriptions.
func BenchmarkMsgApp(b *testing.B) {
	m := benchMsgApp()

	b.Run("codec=handwritten/op=encode", func(b *testing.B) {
		buf := AppendMessage(nil, &m)
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		for b.Loop() {
			buf = AppendMessage(buf[:0], &m)
		}
		b.ReportMetric(float64(len(buf)), "bytes/msg")
	})
	b.Run("codec=handwritten/op=decode", func(b *testing.B) {
		buf := m.Marshal()
		checkDecoded(b, m, func() (Message, error) { return UnmarshalMessage(buf) })
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := UnmarshalMessage(buf); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(buf)), "bytes/msg")
	})

	b.Run("codec=gob/op=encode", func(b *testing.B) {
		var buf bytes.Buffer
		b.ReportAllocs()
		for b.Loop() {
			buf.Reset()
			if err := gob.NewEncoder(&buf).Encode(&m); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(int64(buf.Len()))
		b.ReportMetric(float64(buf.Len()), "bytes/msg")
	})
	b.Run("codec=gob/op=decode", func(b *testing.B) {
		var enc bytes.Buffer
		if err := gob.NewEncoder(&enc).Encode(&m); err != nil {
			b.Fatal(err)
		}
		data := enc.Bytes()
		decode := func() (Message, error) {
			var got Message
			err := gob.NewDecoder(bytes.NewReader(data)).Decode(&got)
			return got, err
		}
		checkDecoded(b, m, decode)
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decode(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(data)), "bytes/msg")
	})

	b.Run("codec=gob-stream/op=encode", func(b *testing.B) {
		var buf bytes.Buffer
		enc := gob.NewEncoder(&buf)
		if err := enc.Encode(&m); err != nil { // types described once, here
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			buf.Reset()
			if err := enc.Encode(&m); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(int64(buf.Len()))
		b.ReportMetric(float64(buf.Len()), "bytes/msg")
	})
	b.Run("codec=gob-stream/op=decode", func(b *testing.B) {
		var buf bytes.Buffer
		enc := gob.NewEncoder(&buf)
		if err := enc.Encode(&m); err != nil {
			b.Fatal(err)
		}
		first := append([]byte(nil), buf.Bytes()...)
		buf.Reset()
		if err := enc.Encode(&m); err != nil {
			b.Fatal(err)
		}
		next := append([]byte(nil), buf.Bytes()...)
		dec := gob.NewDecoder(&repeatReader{first: first, next: next})
		decode := func() (Message, error) {
			var got Message
			err := dec.Decode(&got)
			return got, err
		}
		checkDecoded(b, m, decode)
		b.SetBytes(int64(len(next)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decode(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(next)), "bytes/msg")
	})

	b.Run("codec=json/op=encode", func(b *testing.B) {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		b.ReportAllocs()
		for b.Loop() {
			buf.Reset()
			if err := enc.Encode(&m); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(int64(buf.Len()))
		b.ReportMetric(float64(buf.Len()), "bytes/msg")
	})
	b.Run("codec=json/op=decode", func(b *testing.B) {
		data, err := json.Marshal(&m)
		if err != nil {
			b.Fatal(err)
		}
		decode := func() (Message, error) {
			var got Message
			err := json.Unmarshal(data, &got)
			return got, err
		}
		checkDecoded(b, m, decode)
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decode(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(data)), "bytes/msg")
	})
}

// checkDecoded makes sure a codec under measurement really round-trips.
func checkDecoded(b *testing.B, want Message, decode func() (Message, error)) {
	b.Helper()
	got, err := decode()
	if err != nil {
		b.Fatal(err)
	}
	if !sameMessage(got, want) {
		b.Fatalf("decoded message differs: %v", got)
	}
}

// repeatReader yields first once and then next forever: a gob stream whose
// type descriptions were sent once, followed by the same message over and
// over.
type repeatReader struct {
	first, next []byte
	pos         int
	started     bool
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	cur := r.next
	if !r.started {
		cur = r.first
	}
	n := copy(p, cur[r.pos:])
	r.pos += n
	if r.pos == len(cur) {
		r.pos, r.started = 0, true
	}
	return n, nil
}

var _ io.Reader = (*repeatReader)(nil)
