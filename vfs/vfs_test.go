package vfs

import (
	"errors"
	"path/filepath"
	"syscall"
	"testing"
)

func writeAll(t *testing.T, fsys FS, name, data string, sync bool) {
	t.Helper()
	f, err := fsys.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestMemCrashKeepsOnlySynced(t *testing.T) {
	m := NewMem()
	if err := m.MkdirAll("/d"); err != nil {
		t.Fatal(err)
	}
	writeAll(t, m, "/d/synced", "durable", true)
	writeAll(t, m, "/d/unsynced", "volatile", false)
	if err := m.SyncDir("/d"); err != nil {
		t.Fatal(err)
	}
	writeAll(t, m, "/d/nodirsync", "lost entry", true)
	f, _ := m.OpenRW("/d/synced")
	f.Write([]byte("+tail"))
	f.Close()

	c := m.Crash(nil)
	got, err := ReadFile(c, "/d/synced")
	if err != nil || string(got) != "durable" {
		t.Fatalf("synced file after crash: %q, %v", got, err)
	}
	got, err = ReadFile(c, "/d/unsynced")
	if err != nil || len(got) != 0 {
		t.Fatalf("unsynced file after crash: %q, %v (want empty: entry synced, data not)", got, err)
	}
	if c.Exists("/d/nodirsync") {
		t.Fatalf("file whose directory was never synced survived the crash")
	}
	torn := m.Crash(func(string, int) int { return 2 })
	got, _ = ReadFile(torn, "/d/synced")
	if string(got) != "durable+t" {
		t.Fatalf("torn tail: %q", got)
	}
	zeros := m.Crash(func(string, int) int { return 7 })
	got, _ = ReadFile(zeros, "/d/synced")
	if string(got) != "durable+tail\x00\x00" {
		t.Fatalf("zero-filled tail: %q", got)
	}
}

func TestWriteFileAtomicCrashAtEveryPoint(t *testing.T) {
	// Crash before every operation of an atomic replace: the file holds
	// the old content or the new, never anything else.
	for point := 1; ; point++ {
		m := NewMem()
		m.MkdirAll("/d")
		if err := WriteFileAtomic(m, "/d/f", []byte("old")); err != nil {
			t.Fatal(err)
		}
		f := NewFault(m, nil)
		var image *Mem
		ops := 0
		f.OnOp = func(Op, int, string) {
			ops++
			if ops == point {
				image = m.Crash(nil)
			}
		}
		if err := WriteFileAtomic(f, "/d/f", []byte("new")); err != nil {
			t.Fatal(err)
		}
		if image == nil {
			if point < 3 {
				t.Fatalf("only %d operations seen", point)
			}
			return
		}
		got, err := ReadFile(image, "/d/f")
		if err != nil || (string(got) != "old" && string(got) != "new") {
			t.Fatalf("crash at op %d: %q, %v", point, got, err)
		}
	}
}

func TestFaultInjection(t *testing.T) {
	m := NewMem()
	m.MkdirAll("/d")
	f := NewFault(m, FailNth(OpSync, 2, ErrIO))
	file, err := f.Create("/d/x")
	if err != nil {
		t.Fatal(err)
	}
	file.Write([]byte("a"))
	if err := file.Sync(); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	if err := file.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("second sync: %v, want EIO", err)
	}
	inj, heal := FailFrom(OpWrite, 1, ErrNoSpace)
	f.SetInjector(inj)
	if _, err := file.Write([]byte("b")); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write on full disk: %v", err)
	}
	heal()
	if _, err := file.Write([]byte("b")); err != nil {
		t.Fatalf("write after space returned: %v", err)
	}
	f.SetInjector(func(op Op, n int, _ string) Decision {
		if op == OpWrite {
			return Decision{ShortBytes: 2}
		}
		return Decision{}
	})
	if n, err := file.Write([]byte("cdef")); n != 2 || err == nil {
		t.Fatalf("short write: n=%d err=%v", n, err)
	}
	if f.Count(OpSync) != 2 {
		t.Fatalf("sync count %d", f.Count(OpSync))
	}
}

func TestOSFS(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "f")
	if err := WriteFileAtomic(Default, name, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	got, err := ReadFile(Default, name)
	if err != nil || string(got) != "hello" {
		t.Fatalf("%q %v", got, err)
	}
	names, err := Default.List(dir)
	if err != nil || len(names) != 1 || names[0] != "f" {
		t.Fatalf("list: %v %v", names, err)
	}
	f, err := Default.OpenRW(name)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte(" world"))
	if sz, _ := f.Size(); sz != 11 {
		t.Fatalf("size %d", sz)
	}
	f.Close()
	if _, err := Default.Open(filepath.Join(dir, "missing")); !errors.Is(err, ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
}
