import csv, sys, collections
tot = collections.defaultdict(float); cnt = collections.Counter()
rows = list(csv.reader(open(sys.argv[1])))
hdr = None
for r in rows:
    if 'Kernel Name' in r and 'Metric Value' in r:
        hdr = r; continue
    if hdr is None or len(r) != len(hdr): continue
    d = dict(zip(hdr, r))
    if d.get('Metric Name') != 'gpu__time_duration.sum': continue
    try: v = float(d['Metric Value'].replace(',', ''))
    except: continue
    n = d['Kernel Name'][:110]
    tot[n] += v; cnt[n] += 1
s = sum(tot.values())
print(f"total {s/1e6:.2f} ms over {sum(cnt.values())} kernels")
for n, v in sorted(tot.items(), key=lambda x: -x[1])[:45]:
    print(f"{v/1e6:9.3f} ms {cnt[n]:6d}  {n}")
