package chaos

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// The disk nemesis puts a member's data directory on a small ext4 file
// system in a loop-mounted image file — not tmpfs, so fsync and ENOSPC are
// the kernel's own — and fills it with a filler file, holds, then deletes
// the filler. The member must refuse writes with etcd's "database space
// exceeded" while full, never crash or corrupt its data, and catch up once
// space returns.

// diskImageBytes is the size of each member's file system: room for a
// run's WAL (segments are preallocated sparse, so only what is written
// takes space) and snapshots many times over.
const diskImageBytes = 256 << 20

// diskTools are the programs the disk nemesis needs.
var diskTools = []string{"mkfs.ext4", "mount", "umount", "losetup"}

// diskSupport reports why the disk nemesis cannot run here, or nil: it
// needs root and the tools, and tries one loop mount in dir.
func diskSupport(dir string) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (loop mounts)")
	}
	for _, t := range diskTools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("needs %s: %w", t, err)
		}
	}
	d, err := mountLoopDisk(filepath.Join(dir, "probe.img"), filepath.Join(dir, "probe"), 8<<20)
	if err != nil {
		return err
	}
	if err := d.unmount(); err != nil {
		return err
	}
	os.Remove(d.mnt)
	os.Remove(d.img)
	return nil
}

// loopDisk is one loop-mounted ext4 file system.
type loopDisk struct {
	img, mnt string
	mounted  bool
}

// filler is the file that fills a loopDisk, in its root.
func (d *loopDisk) filler() string { return filepath.Join(d.mnt, "filler") }

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// mountLoopDisk makes an ext4 file system of size bytes in img (sparse)
// and mounts it on mnt. No blocks are reserved for root: the member runs as
// root here and must see the disk as full as its users would.
func mountLoopDisk(img, mnt string, size int64) (*loopDisk, error) {
	d := &loopDisk{img: img, mnt: mnt}
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("chaos: disk image: %w", err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("chaos: disk image: %w", err)
	}
	if err := run("mkfs.ext4", "-q", "-F", "-m", "0", img); err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	}
	// -o loop attaches a loop device with autoclear: umount frees it;
	// discard gives freed blocks back to the sparse image.
	if err := run("mount", "-t", "ext4", "-o", "loop,discard", img, mnt); err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	}
	d.mounted = true
	return d, nil
}

// fill takes every free block with the filler file and returns how many
// bytes it took.
func (d *loopDisk) fill() (int64, error) {
	f, err := os.OpenFile(d.filler(), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, fmt.Errorf("chaos: fill %s: %w", d.mnt, err)
	}
	defer f.Close()
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.mnt, &st); err != nil {
		return 0, fmt.Errorf("chaos: fill %s: %w", d.mnt, err)
	}
	off, _ := f.Seek(0, 2)
	// Allocate in halving chunks (a file system keeps a little for its
	// metadata, so the free count is not all allocatable), then take what
	// is left block by block.
	chunk := int64(st.Bavail) * st.Bsize
	for chunk >= 4096 {
		switch err := syscall.Fallocate(int(f.Fd()), 0, off, chunk); {
		case err == nil:
			off += chunk
		case errors.Is(err, syscall.ENOSPC):
			chunk /= 2
		default:
			return off, fmt.Errorf("chaos: fill %s: %w", d.mnt, err)
		}
	}
	block := make([]byte, 4096)
	for {
		if _, err := f.WriteAt(block, off); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			return off, fmt.Errorf("chaos: fill %s: %w", d.mnt, err)
		}
		off += int64(len(block))
	}
	// The last write may have allocated nothing; the file system is full.
	return off, nil
}

// drain deletes the filler: the space returns.
func (d *loopDisk) drain() error {
	if err := os.Remove(d.filler()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("chaos: drain %s: %w", d.mnt, err)
	}
	return nil
}

// unmount unmounts the file system (lazily if it is busy) and detaches
// any loop device still holding the image. The image stays: after a failed
// run it holds the member's data (mount -o loop n1.img to look). Idempotent.
func (d *loopDisk) unmount() error {
	if d == nil || !d.mounted {
		return nil
	}
	var errs []error
	if err := run("umount", d.mnt); err != nil {
		if err2 := run("umount", "-l", d.mnt); err2 != nil {
			errs = append(errs, err, err2)
		}
	}
	// autoclear should have freed the device; make sure.
	if out, err := exec.Command("losetup", "-j", d.img).Output(); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if dev, _, ok := strings.Cut(line, ":"); ok && strings.HasPrefix(dev, "/dev/loop") {
				if err := run("losetup", "-d", dev); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	d.mounted = false
	return errors.Join(errs...)
}
