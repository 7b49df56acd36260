# usage: rec-real.sh PREFIX MARKER NODE [POD...]; records node NODE's view (and pods') of a kept run
set -e
P=$1; M=$2; N=$3; shift 3
D=/work/wt-pods-h/harness/src/invariant/testdata/pods
NS=/run/netns/$M-$N
B=$(ls -d /sys/fs/bpf/dp-harness-${M#dph-}/$N/datapathd/pods)
e() { nsenter --net=$NS -- "$@"; }
e ip -j -s link show > $D/$P.node.link.json
e ip -j addr show > $D/$P.node.addr.json
e ip -j route show > $D/$P.node.route.json
e ip -j rule show > $D/$P.node.rule.json
e ip -j neigh show > $D/$P.node.neigh.json
e bpftool -j net show > $D/$P.node.net.json
e bpftool -j -f link show | python3 -c "import json,sys;print(json.dumps([l for l in json.load(sys.stdin) if any(p.startswith('$B') for p in l.get('pinned',[]))]))" > $D/$P.node.bpf-link.json
IDS=$(python3 -c "import json;print(' '.join(str(l['prog_id']) for l in json.load(open('$D/$P.node.bpf-link.json'))))")
e bpftool -j -f prog show | python3 -c "import json,sys;ids=set(map(int,'$IDS'.split()));print(json.dumps([p for p in json.load(sys.stdin) if p['id'] in ids]))" > $D/$P.node.bpf-prog.json
e bpftool -j map dump pinned $B/maps/dp_endpoints > $D/$P.node.endpoints.json
e bpftool -j map dump pinned $B/maps/dp_ipcache > $D/$P.node.ipcache.json
for pod in "$@"; do
  PN=/run/netns/$M-$N-$pod
  nsenter --net=$PN -- ping -c1 -W1 $(python3 -c "import json;r=[x for x in json.load(open('$D/$P.node.addr.json')) if x['ifname']=='dp_host'][0];print(r['addr_info'][0]['local'])") >/dev/null || true
  for w in addr route neigh; do nsenter --net=$PN -- ip -j $w show > $D/$P.$pod.$w.json; done
done
echo "recorded $P from $M $N (bpffs $B)"
