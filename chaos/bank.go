package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The bank workload: a few accounts with a known total, created together
// at the start. Transfer clients (one per member, up to bankTransferers,
// pinned to it) move money between random pairs: read both balances (two
// Gets), then one Txn that compares both accounts' mod revisions and puts
// both new balances, never below zero. A reader (pinned to the last member)
// reads every account in one Txn with no compares — in a sharded run a
// read-only cross-shard transaction, which must see one consistent state of
// every shard — and so does the final check once the faults heal. Sharded
// runs spread the accounts over the initial shards (see bankKeys), so
// transfers and full reads are cross-shard transactions.
//
// Every transfer has an ID, unique in the run, and its Txn appends the ID
// to both accounts' values (bankAccount: the balance and the log of the
// transfers applied to the account). So any state read tells exactly which
// transfers were applied to which side, and it is checked (verifyState):
// the total is the opening total; each account's balance is its opening
// balance plus what its log says came in, less what went out, and is never
// negative; every logged ID is a transfer this run made, touching that
// account, logged once; and every transfer in one account's log is in the
// other's too (none half-applied). Every full read is checked so, as it
// completes, and must not be stale: each account's log must hold the last
// transfer on it acknowledged before the read was invoked (logs only grow,
// so that one stands for all before it). The final state is checked also
// against what the transfer clients were
// told (verifyFinal): every acknowledged transfer applied (to both sides),
// no refused one applied at all, and an unknown one (an error: it may or
// may not have committed; never retried) applied entirely or not at all.
//
// The logs grow by one ID per transfer and are never trimmed: a run's
// transfers are bounded by bankTransfersMax, which keeps each value well
// under a hundred kilobytes.

const (
	bankAccounts    = 8    // the number of accounts (keyspace.bank lists their keys)
	bankOpening     = 1000 // each account's opening balance
	bankAmountMax   = 50   // a transfer moves 1 to this much (never more than the source holds)
	bankTransferers = 3    // transfer clients: one on each of the first members
	// bankTransfersMax bounds a run's transfers, and so the accounts' logs
	// (each account's value grows by an ID per transfer it takes part in).
	bankTransfersMax = 20_000
	// bankReadPace spaces the reader's full reads.
	bankReadPace = 50 * time.Millisecond
	// bankBadReadsMax bounds the full reads reported one by one; the rest
	// are counted.
	bankBadReadsMax = 5
	// bankProblemsMax bounds what one check of a state reports.
	bankProblemsMax = 10
)

// bankOutcome is what a transfer's client was told.
type bankOutcome int

const (
	bankInFlight bankOutcome = iota // not answered yet
	bankAcked                       // Succeeded: applied
	bankRefused                     // not Succeeded: a compare failed, nothing applied
	bankUnknown                     // an error: may or may not have applied
)

// bankTransfer is one transfer as its client made it.
type bankTransfer struct {
	from, to int // accounts, by index
	amount   int64
	outcome  bankOutcome
	client   int
	// invoked and returned are the Txn's times from the run's start;
	// err is an unknown transfer's error.
	invoked, returned time.Duration
	err               string
}

// bankAccount is an account's value: its balance and the IDs of the
// transfers applied to it, oldest first.
type bankAccount struct {
	Balance int64   `json:"balance"`
	Applied []int64 `json:"applied"`
}

// bankWorkload holds the bank's history: the transfers (transfer ID i+1 is
// transfers[i]), the full reads' verdicts, and the final check's counts.
type bankWorkload struct {
	keys  []string  // the accounts' keys (keyspace.bank)
	start time.Time // the run's start, for the times in the evidence

	mu          sync.Mutex
	transfers   []bankTransfer
	lastAcked   []int64 // by account: the last transfer on it acknowledged (0: none)
	reads       int     // full reads that saw a consistent state
	readsFailed int     // full reads that returned an error (left out)
	badReads    int     // full reads that saw an inconsistent state
	violations  []string
	// The final check's findings, for the summary.
	checked                      bool
	unknownApplied, appliedTotal int
	finalTotal                   int64
	final                        []*bankAccount // the final state, for the evidence
}

// bankKeys are the accounts' keys: bank/<i> on one group. Sharded, each
// starts with its own first byte, spread evenly over the byte range
// (0x10, "0" = 0x30, "P", "p", 0x90, 0xb0, 0xd0, 0xf0, then "bank/<i>"),
// since the initial shards are cut at first bytes: with --shards 2 to 8
// every shard holds one or more accounts, and a transfer between two of
// them is most often a cross-shard Txn.
func bankKeys(sharded bool) []string {
	keys := make([]string, bankAccounts)
	for i := range keys {
		keys[i] = fmt.Sprintf("bank/%d", i)
		if sharded {
			keys[i] = string([]byte{byte(0x10 + i*256/bankAccounts)}) + keys[i]
		}
	}
	return keys
}

// total is the money in the bank.
func (bw *bankWorkload) total() int64 { return int64(len(bw.keys)) * bankOpening }

// errBankCorrupt says an account's value is not a bankAccount.
var errBankCorrupt = errors.New("not a bank account")

// setup creates the accounts, all with the opening balance, in one Txn
// that puts them only if none exists. An error leaves the outcome unknown,
// so it asks again (the compares make that safe) until ctx ends; an answer
// that they exist already must show them as setup makes them.
func (bw *bankWorkload) setup(ctx context.Context, cli *clientv3.Client, opTimeout time.Duration) error {
	open, err := json.Marshal(bankAccount{Balance: bankOpening, Applied: []int64{}})
	if err != nil {
		return err
	}
	var cmps []clientv3.Cmp
	var puts, gets []clientv3.Op
	for _, k := range bw.keys {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		puts = append(puts, clientv3.OpPut(k, string(open)))
		gets = append(gets, clientv3.OpGet(k))
	}
	for {
		octx, cancel := context.WithTimeout(ctx, 2*opTimeout)
		r, err := cli.Txn(octx).If(cmps...).Then(puts...).Else(gets...).Commit()
		cancel()
		if err == nil {
			if r.Succeeded {
				return nil
			}
			state, err := bw.decode(r)
			if err != nil {
				return fmt.Errorf("bank: creating the accounts: %w", err)
			}
			for i, a := range state {
				if a == nil || a.Balance != bankOpening || len(a.Applied) != 0 {
					return fmt.Errorf("bank: creating the accounts: %q exists already, as %+v", bw.keys[i], a)
				}
			}
			return nil
		}
		if !pause(ctx, opTimeout/4) {
			return fmt.Errorf("bank: creating the accounts: %w", err)
		}
	}
}

// decode reads the accounts from a Txn whose responses are one Get per
// account, in order; a missing account is nil.
func (bw *bankWorkload) decode(r *clientv3.TxnResponse) ([]*bankAccount, error) {
	if len(r.Responses) != len(bw.keys) {
		return nil, fmt.Errorf("%d responses to %d reads", len(r.Responses), len(bw.keys))
	}
	state := make([]*bankAccount, len(bw.keys))
	for i, resp := range r.Responses {
		rr := resp.GetResponseRange()
		if rr == nil {
			return nil, fmt.Errorf("response %d is not a range", i)
		}
		if len(rr.Kvs) == 0 {
			continue
		}
		var a bankAccount
		if err := json.Unmarshal(rr.Kvs[0].Value, &a); err != nil {
			return nil, fmt.Errorf("%q holds %q: %w (%w)", bw.keys[i], rr.Kvs[0].Value, errBankCorrupt, err)
		}
		state[i] = &a
	}
	return state, nil
}

// readAll reads every account in one Txn with no compares.
func (bw *bankWorkload) readAll(ctx context.Context, cli *clientv3.Client) ([]*bankAccount, error) {
	gets := make([]clientv3.Op, len(bw.keys))
	for i, k := range bw.keys {
		gets[i] = clientv3.OpGet(k)
	}
	r, err := cli.Txn(ctx).Then(gets...).Commit()
	if err != nil {
		return nil, err
	}
	return bw.decode(r)
}

// member runs member i's bank clients on cli until ctx ends: a transfer
// client on each of the first bankTransferers members, and the reader on
// the last member.
func (bw *bankWorkload) member(ctx context.Context, i, nodes int, cli *clientv3.Client, rng *rand.Rand, opTimeout time.Duration) {
	var wg sync.WaitGroup
	if i == nodes-1 {
		wg.Add(1)
		go func() { defer wg.Done(); bw.reader(ctx, cli, opTimeout) }()
	}
	if i < bankTransferers {
		for ctx.Err() == nil {
			if !bw.transfer(ctx, i, cli, rng, opTimeout) && !pause(ctx, opTimeout/4) {
				break
			}
		}
	}
	wg.Wait()
}

// get reads one account, with its mod revision.
func (bw *bankWorkload) get(ctx context.Context, cli *clientv3.Client, i int, opTimeout time.Duration) (*bankAccount, int64, error) {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	r, err := cli.Get(octx, bw.keys[i])
	if err != nil {
		return nil, 0, err
	}
	if len(r.Kvs) == 0 {
		return nil, 0, fmt.Errorf("bank: account %q is missing", bw.keys[i])
	}
	var a bankAccount
	if err := json.Unmarshal(r.Kvs[0].Value, &a); err != nil {
		return nil, 0, fmt.Errorf("bank: %q holds %q: %w (%w)", bw.keys[i], r.Kvs[0].Value, errBankCorrupt, err)
	}
	return &a, r.Kvs[0].ModRevision, nil
}

// transfer makes one transfer between a random pair of accounts and
// records what it was told. It reports false when the caller should pause
// (a read failed, or the run's transfers are used up).
func (bw *bankWorkload) transfer(ctx context.Context, client int, cli *clientv3.Client, rng *rand.Rand, opTimeout time.Duration) bool {
	from, to := rng.IntN(len(bw.keys)), rng.IntN(len(bw.keys)-1)
	if to >= from {
		to++
	}
	a, ra, err := bw.get(ctx, cli, from, opTimeout)
	if err != nil {
		bw.corrupt(err)
		return false
	}
	b, rb, err := bw.get(ctx, cli, to, opTimeout)
	if err != nil {
		bw.corrupt(err)
		return false
	}
	amount := min(1+rng.Int64N(bankAmountMax), a.Balance)
	if amount <= 0 {
		return true // nothing to move from this one
	}
	id, ok := bw.begin(client, from, to, amount)
	if !ok {
		return false
	}
	na := bankAccount{Balance: a.Balance - amount, Applied: append(slices.Clone(a.Applied), id)}
	nb := bankAccount{Balance: b.Balance + amount, Applied: append(slices.Clone(b.Applied), id)}
	va, err := json.Marshal(na)
	if err != nil {
		panic(err) // a struct of numbers always encodes
	}
	vb, err := json.Marshal(nb)
	if err != nil {
		panic(err)
	}
	// A cross-shard Txn is four rounds of consensus (transactions.md):
	// it gets twice a plain call's time.
	tctx, cancel := context.WithTimeout(ctx, 2*opTimeout)
	r, err := cli.Txn(tctx).If(
		clientv3.Compare(clientv3.ModRevision(bw.keys[from]), "=", ra),
		clientv3.Compare(clientv3.ModRevision(bw.keys[to]), "=", rb),
	).Then(
		clientv3.OpPut(bw.keys[from], string(va)),
		clientv3.OpPut(bw.keys[to], string(vb)),
	).Commit()
	cancel()
	outcome := bankUnknown // never retried: it may have committed
	if err == nil {
		outcome = bankRefused
		if r.Succeeded {
			outcome = bankAcked
		}
	}
	bw.mu.Lock()
	t := &bw.transfers[id-1]
	t.outcome, t.returned = outcome, time.Since(bw.start)
	if err != nil {
		t.err = err.Error()
	}
	if outcome == bankAcked {
		if bw.lastAcked == nil {
			bw.lastAcked = make([]int64, len(bw.keys))
		}
		bw.lastAcked[from], bw.lastAcked[to] = id, id
	}
	bw.mu.Unlock()
	return true
}

// begin records a transfer about to be sent and returns its ID; false once
// the run's transfers are used up.
func (bw *bankWorkload) begin(client, from, to int, amount int64) (int64, bool) {
	bw.mu.Lock()
	defer bw.mu.Unlock()
	if len(bw.transfers) >= bankTransfersMax {
		return 0, false
	}
	bw.transfers = append(bw.transfers, bankTransfer{from: from, to: to, amount: amount, client: client, invoked: time.Since(bw.start)})
	return int64(len(bw.transfers)), true
}

// corrupt records an account value that does not decode as a violation;
// other errors (a failed read) change nothing.
func (bw *bankWorkload) corrupt(err error) {
	if !errors.Is(err, errBankCorrupt) {
		return
	}
	bw.mu.Lock()
	defer bw.mu.Unlock()
	if len(bw.violations) < bankBadReadsMax {
		bw.violations = append(bw.violations, err.Error())
	}
}

// reader makes full reads, paced, until ctx ends, and checks each.
func (bw *bankWorkload) reader(ctx context.Context, cli *clientv3.Client, opTimeout time.Duration) {
	for ctx.Err() == nil {
		octx, cancel := context.WithTimeout(ctx, 2*opTimeout)
		invoked := time.Since(bw.start)
		bw.mu.Lock()
		seen := slices.Clone(bw.lastAcked) // acknowledged before the read is invoked
		bw.mu.Unlock()
		state, err := bw.readAll(octx, cli)
		cancel()
		if err != nil {
			bw.mu.Lock()
			bw.readsFailed++
			bw.mu.Unlock()
			bw.corrupt(err)
		} else {
			bw.noteRead(state, seen, fmt.Sprintf("full read invoked at %v, returned at %v", invoked.Round(time.Millisecond), time.Since(bw.start).Round(time.Millisecond)))
		}
		if !pause(ctx, bankReadPace) {
			return
		}
	}
}

// noteRead checks a full read's state, and that it holds every transfer
// in seen (by account: the last acknowledged before the read was invoked;
// nil or 0: none), and records the verdict.
func (bw *bankWorkload) noteRead(state []*bankAccount, seen []int64, what string) {
	bw.mu.Lock()
	defer bw.mu.Unlock()
	p := bw.verifyState(state, what)
	for i, id := range seen {
		if id != 0 && i < len(state) && state[i] != nil && !slices.Contains(state[i].Applied, id) {
			p = append(p, fmt.Sprintf("bank: %s: stale: transfer %d was acknowledged before the read was invoked, but is not in %q's log (%d transfers)",
				what, id, bw.keys[i], len(state[i].Applied)))
		}
	}
	if len(p) == 0 {
		bw.reads++
		return
	}
	bw.badReads++
	if bw.badReads <= bankBadReadsMax {
		bw.violations = append(bw.violations, p...)
	}
}

// verifyState checks one state of every account against the transfers
// made: the total, each balance against its log, logs naming only
// transfers of this run touching the account, once each, and each
// transfer in both its accounts' logs or neither. bw.mu is held.
func (bw *bankWorkload) verifyState(state []*bankAccount, what string) []string {
	var out []string
	more := 0
	report := func(format string, args ...any) {
		if len(out) < bankProblemsMax {
			out = append(out, "bank: "+what+": "+fmt.Sprintf(format, args...))
		} else {
			more++
		}
	}
	var total int64
	logged := make([]map[int64]bool, len(state))
	for i, a := range state {
		logged[i] = map[int64]bool{}
		if a == nil {
			report("account %q is missing", bw.keys[i])
			continue
		}
		total += a.Balance
	}
	if total != bw.total() {
		report("the accounts hold %d in all, want %d", total, bw.total())
	}
	for i, a := range state {
		if a == nil {
			continue
		}
		want := int64(bankOpening)
		for _, id := range a.Applied {
			if logged[i][id] {
				report("transfer %d is applied twice to %q", id, bw.keys[i])
				continue
			}
			logged[i][id] = true
			if id < 1 || id > int64(len(bw.transfers)) {
				report("%q's log names transfer %d, which no client made", bw.keys[i], id)
				continue
			}
			t := bw.transfers[id-1]
			switch i {
			case t.from:
				want -= t.amount
			case t.to:
				want += t.amount
			default:
				report("%q's log names transfer %d, which was between %q and %q", bw.keys[i], id, bw.keys[t.from], bw.keys[t.to])
			}
		}
		if a.Balance != want {
			report("%q holds %d, but its log of %d transfers gives %d", bw.keys[i], a.Balance, len(a.Applied), want)
		}
		if a.Balance < 0 {
			report("%q holds %d, below zero", bw.keys[i], a.Balance)
		}
	}
	// Half-applied: in one side's log, not the other's.
	for i := range state {
		for _, id := range sortedIDs(logged[i]) {
			if id < 1 || id > int64(len(bw.transfers)) {
				continue
			}
			t := bw.transfers[id-1]
			if i != t.from && i != t.to {
				continue
			}
			other := t.to
			if i == t.to {
				other = t.from
			}
			if state[other] != nil && !logged[other][id] {
				report("transfer %d (%d from %q to %q, %s) is half-applied: in %q's log, not in %q's",
					id, t.amount, bw.keys[t.from], bw.keys[t.to], t.outcome, bw.keys[i], bw.keys[other])
			}
		}
	}
	if more > 0 {
		out = append(out, fmt.Sprintf("bank: %s: and %d more problems", what, more))
	}
	return out
}

// sortedIDs lists a set's IDs in order, for reports that do not depend on
// map order.
func sortedIDs(set map[int64]bool) []int64 {
	ids := make([]int64, 0, len(set))
	for id := range set {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// String names an outcome in reports.
func (o bankOutcome) String() string {
	switch o {
	case bankAcked:
		return "acknowledged"
	case bankRefused:
		return "refused"
	case bankUnknown:
		return "unknown"
	}
	return "in flight"
}

// verifyFinal checks the state read once every client stopped and the
// faults healed: verifyState, and each transfer against what its client
// was told. It records the counts for the summary.
func (bw *bankWorkload) verifyFinal(state []*bankAccount) []string {
	bw.mu.Lock()
	defer bw.mu.Unlock()
	out := bw.verifyState(state, "final state")
	in := func(i int, id int64) bool {
		return state[i] != nil && slices.Contains(state[i].Applied, id)
	}
	bw.checked, bw.final = true, state
	bw.finalTotal, bw.appliedTotal, bw.unknownApplied = 0, 0, 0
	for _, a := range state {
		if a != nil {
			bw.finalTotal += a.Balance
		}
	}
	var notApplied, refusedApplied []string
	for k, t := range bw.transfers {
		id := int64(k + 1)
		inFrom, inTo := in(t.from, id), in(t.to, id)
		if inFrom && inTo {
			bw.appliedTotal++
		}
		desc := fmt.Sprintf("%d (%d from %q to %q)", id, t.amount, bw.keys[t.from], bw.keys[t.to])
		switch t.outcome {
		case bankAcked:
			// One side only is reported as half-applied above.
			if !inFrom && !inTo {
				notApplied = append(notApplied, desc)
			}
		case bankRefused:
			if inFrom || inTo {
				refusedApplied = append(refusedApplied, desc)
			}
		default:
			if inFrom && inTo {
				bw.unknownApplied++
			}
		}
	}
	if len(notApplied) > 0 {
		out = append(out, fmt.Sprintf("bank: %d acknowledged transfers not applied, first %s", len(notApplied), notApplied[0]))
	}
	if len(refusedApplied) > 0 {
		out = append(out, fmt.Sprintf("bank: %d refused transfers applied, first %s", len(refusedApplied), refusedApplied[0]))
	}
	return out
}

// check reads every account once more (asking again while the reads
// fail, until ctx ends) and verifies the final state; with it go the
// violations the full reads found during the run.
func (bw *bankWorkload) check(ctx context.Context, final *clientv3.Client) []string {
	var out []string
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		state, err := bw.readAll(rctx, final)
		cancel()
		if err == nil {
			out = bw.verifyFinal(state)
			break
		}
		if errors.Is(err, errBankCorrupt) || !pause(ctx, 200*time.Millisecond) {
			out = []string{"bank: the final read failed: " + err.Error()}
			break
		}
	}
	return append(bw.readViolations(), out...)
}

// readViolations are the violations found during the run: full reads
// that saw an inconsistent state, and values that were not accounts.
func (bw *bankWorkload) readViolations() []string {
	bw.mu.Lock()
	defer bw.mu.Unlock()
	out := slices.Clone(bw.violations)
	if bw.badReads > 0 {
		out = append(out, fmt.Sprintf("bank: %d of %d full reads saw an inconsistent state (the first %d are listed)",
			bw.badReads, bw.badReads+bw.reads, min(bw.badReads, bankBadReadsMax)))
	}
	return out
}

// summary is the report's line on the bank.
func (bw *bankWorkload) summary() string {
	bw.mu.Lock()
	defer bw.mu.Unlock()
	var acked, refused, unknown int
	for _, t := range bw.transfers {
		switch t.outcome {
		case bankAcked:
			acked++
		case bankRefused:
			refused++
		default:
			unknown++
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "bank: %d accounts, %d transfers acknowledged, %d refused, %d unknown", len(bw.keys), acked, refused, unknown)
	if bw.checked {
		fmt.Fprintf(&b, " (%d applied)", bw.unknownApplied)
	}
	fmt.Fprintf(&b, ", %d consistent full reads (%d inconsistent, %d failed)", bw.reads, bw.badReads, bw.readsFailed)
	if bw.checked {
		fmt.Fprintf(&b, "; final total %d (opening %d)", bw.finalTotal, bw.total())
	}
	return b.String()
}

// writeEvidence writes every transfer — ID, accounts, amount, client,
// outcome, times from the run's start and an unknown one's error — and,
// if the final check read them, the final state's accounts.
func (bw *bankWorkload) writeEvidence(path string) error {
	bw.mu.Lock()
	defer bw.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "# id from to amount client outcome invoked returned [error]\n")
	for k, t := range bw.transfers {
		fmt.Fprintf(&b, "%d %q %q %d c%d %s %v %v", k+1, bw.keys[t.from], bw.keys[t.to], t.amount, t.client, strings.ReplaceAll(t.outcome.String(), " ", "-"),
			t.invoked.Round(time.Millisecond), t.returned.Round(time.Millisecond))
		if t.err != "" {
			fmt.Fprintf(&b, " %s", t.err)
		}
		b.WriteByte('\n')
	}
	for i, a := range bw.final {
		if a == nil {
			fmt.Fprintf(&b, "final %q missing\n", bw.keys[i])
			continue
		}
		fmt.Fprintf(&b, "final %q balance %d applied %v\n", bw.keys[i], a.Balance, a.Applied)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("bank: writing the evidence: %w", err)
	}
	return nil
}
