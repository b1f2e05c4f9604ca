import sys,statistics,collections,re
O='/tmp/allocs/out-final'
V=['base','s1','s2','s3','s4','s5','s6']
def load(f):
    d=collections.defaultdict(list)
    try: lines=open(f).read().splitlines()
    except FileNotFoundError: return {}
    for line in lines:
        if not line.startswith('Benchmark'): continue
        p=line.split(); name=re.sub(r'-2$','',p[0]); vals={}
        for i in range(2,len(p)-1,2):
            try: vals[p[i+1]]=float(p[i])
            except: pass
        d[name].append(vals)
    return d
def med(runs,k):
    xs=[r[k] for r in runs if k in r]
    return (statistics.median(xs),min(xs),max(xs),len(xs)) if xs else None
mode=sys.argv[1] if len(sys.argv)>1 else 'all'
data={v:{'core':load(f'{O}/{v}/core.txt'),'nodes':load(f'{O}/{v}/nodes.txt'),'wal':load(f'{O}/{v}/wal.txt')} for v in V}
def fmt(x,k):
    if x is None: return '-'
    m=x[0]
    if k in('proposals/s','ops/s'): return f"{m:,.0f}"
    if k=='p99-ms': return f"{m:.1f}"
    if k=='ns/op': return f"{m:,.0f}"
    return f"{m:,.0f}" if m>=10 else f"{m:g}"
if mode in('all','nodes'):
    for prop in (16,256):
        n=f'BenchmarkNode/proposers={prop}/system=ballot'
        print(f'\nnode proposers={prop}: variant | ops/s (min-max) | p99 ms | B/op | allocs/op | n')
        for v in V:
            r=data[v]['nodes'].get(n,[])
            if not r: continue
            o=med(r,'ops/s')
            print(f"{v} | {fmt(o,'ops/s')} ({o[1]:,.0f}-{o[2]:,.0f}) | {fmt(med(r,'p99-ms'),'p99-ms')} | {fmt(med(r,'B/op'),'B/op')} | {fmt(med(r,'allocs/op'),'a')} | {o[3]}")
if mode in('all','core'):
    cells=[(p,w) for p in ('16B','256B','4096B') for w in (1,64,1024)]
    print('\ncore ballot-raft: variant | per cell (payload/window): proposals/s, B/op, allocs/op, ratio to etcd-raft (same run, median of per-round ratios)')
    for v in V:
        c=data[v]['core']; out=[]
        for p,w in cells:
            b=c.get(f'BenchmarkCore/payload={p}/window={w}/engine=ballot-raft',[]); e=c.get(f'BenchmarkCore/payload={p}/window={w}/engine=etcd-raft',[])
            if not b: continue
            ratios=[x['proposals/s']/y['proposals/s'] for x,y in zip(b,e)]
            out.append(f"{p}/{w}: {fmt(med(b,'proposals/s'),'proposals/s')} {fmt(med(b,'B/op'),'B/op')}B {fmt(med(b,'allocs/op'),'a')}a {statistics.median(ratios):.2f}x")
        print(v,' | '.join(out))
if mode in('all','wal'):
    print('\nwal: variant | bench | ns/op | B/op | allocs/op')
    for v in V:
        for n,r in data[v]['wal'].items():
            print(v,n.replace('Benchmark',''),fmt(med(r,'ns/op'),'ns/op'),fmt(med(r,'B/op'),'B/op'),fmt(med(r,'allocs/op'),'a'),len(r))
