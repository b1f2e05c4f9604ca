package main

import (
	"bufio"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// result is one benchmark line: its name (without the -GOMAXPROCS
// suffix) and its metrics by unit.
type result struct {
	name    string
	metrics map[string]float64
}

var procSuffix = regexp.MustCompile(`-\d+$`)

// parse reads `go test -bench` output and returns its benchmark lines.
func parse(r io.Reader) []result {
	var out []result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		res := result{name: procSuffix.ReplaceAllString(f[0], ""), metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			res.metrics[f[i+1]] = v
		}
		out = append(out, res)
	}
	return out
}

// runs holds every round's results of one suite: runs[round][name].
type runs []map[string]map[string]float64

func (rs *runs) add(results []result) {
	m := map[string]map[string]float64{}
	for _, r := range results {
		m[r.name] = r.metrics
	}
	*rs = append(*rs, m)
}

// values returns the metric of name in every round that has it.
func (rs runs) values(name, unit string) []float64 {
	var v []float64
	for _, round := range rs {
		if m, ok := round[name]; ok {
			if x, ok := m[unit]; ok {
				v = append(v, x)
			}
		}
	}
	return v
}

// ratios returns, for every round that has both, the metric of a divided
// by that of b: pairwise, so that the load of the moment cancels.
func (rs runs) ratios(a, b, unit string) []float64 {
	var v []float64
	for _, round := range rs {
		ma, okA := round[a]
		mb, okB := round[b]
		if !okA || !okB {
			continue
		}
		x, okX := ma[unit]
		y, okY := mb[unit]
		if okX && okY && y != 0 {
			v = append(v, x/y)
		}
	}
	return v
}

// median returns the median of v, and false if v is empty.
func median(v []float64) (float64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], true
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, true
}
