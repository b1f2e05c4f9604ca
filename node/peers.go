package node

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/vfs"
)

// peerBook is where this node believes each member listens: the transport's
// view. It merges, in increasing precedence, the book saved in the data
// directory at the last change, the addresses learned from the log, and
// Config.Peers. It is saved (DataDir/peers, written atomically) whenever it
// changes, so that a member restarted with a shorter Peers list still
// reaches the initial members, whose addresses the log does not carry.
//
// File format, one line per member, in ID order:
//
//	ballot-peers 1
//	<id> <address>
type peerBook struct {
	n  *Node
	mu sync.Mutex
	m  map[consensus.NodeID]string
}

const peersHeader = "ballot-peers 1"

func (n *Node) peersFile() string { return filepath.Join(n.cfg.DataDir, "peers") }

// loadPeerBook reads the saved book, if any.
func loadPeerBook(n *Node) (*peerBook, error) {
	pb := &peerBook{n: n, m: map[consensus.NodeID]string{}}
	b, err := vfs.ReadFile(n.cfg.FS, n.peersFile())
	if errors.Is(err, fs.ErrNotExist) {
		return pb, nil
	}
	if err != nil {
		return nil, fmt.Errorf("node: read %s: %w", n.peersFile(), err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if line == 1 {
			if text != peersHeader {
				return nil, fmt.Errorf("node: %s: unknown header %q", n.peersFile(), text)
			}
			continue
		}
		idText, addr, ok := strings.Cut(text, " ")
		id, err := strconv.ParseUint(idText, 10, 64)
		if !ok || err != nil || id == 0 {
			return nil, fmt.Errorf("node: %s line %d: bad entry %q", n.peersFile(), line, text)
		}
		pb.m[consensus.NodeID(id)] = addr
	}
	return pb, nil
}

// merge adds addresses (learned from the log) and then Config.Peers.
func (pb *peerBook) merge(learned map[consensus.NodeID]string) {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	maps.Copy(pb.m, learned)
	maps.Copy(pb.m, pb.n.cfg.Peers)
	delete(pb.m, consensus.None)
}

// snapshot returns a copy of the book.
func (pb *peerBook) snapshot() map[consensus.NodeID]string {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	return maps.Clone(pb.m)
}

// set records id's address (from the log); Config.Peers still wins.
func (pb *peerBook) set(id consensus.NodeID, addr string) {
	if _, pinned := pb.n.cfg.Peers[id]; pinned || addr == "" {
		return
	}
	pb.mu.Lock()
	changed := pb.m[id] != addr
	pb.m[id] = addr
	pb.mu.Unlock()
	if !changed {
		return
	}
	if id != pb.n.id && pb.n.tr != nil {
		pb.n.tr.AddPeer(id, addr)
	}
	pb.save()
}

// removeGrace is how long the transport keeps a removed member's
// connection after the removal is applied. The engine's last messages to
// it (the append whose commit index tells it of its own removal) were
// queued just before the apply; closing the connection at once would drop
// them, and the removed member would never learn it should stop.
const removeGrace = 2 * time.Second

// remove forgets a member removed from the group. The transport lets go of
// it removeGrace later, unless it was added back in the meantime.
func (pb *peerBook) remove(id consensus.NodeID) {
	pb.mu.Lock()
	_, had := pb.m[id]
	delete(pb.m, id)
	pb.mu.Unlock()
	if id != pb.n.id && pb.n.tr != nil {
		tr := pb.n.tr
		time.AfterFunc(removeGrace, func() {
			pb.mu.Lock()
			_, back := pb.m[id]
			pb.mu.Unlock()
			if !back {
				tr.RemovePeer(id)
			}
		})
	}
	if had {
		pb.save()
	}
}

// save writes the book to the data directory. A failure is logged: the
// book is a convenience for restarts, not part of the replicated state.
func (pb *peerBook) save() {
	m := pb.snapshot()
	var b strings.Builder
	b.WriteString(peersHeader + "\n")
	for _, id := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "%d %s\n", id, m[id])
	}
	if err := vfs.WriteFileAtomic(pb.n.cfg.FS, pb.n.peersFile(), []byte(b.String())); err != nil {
		pb.n.log.Warn("saving the peer address book failed", "err", err)
	}
}
