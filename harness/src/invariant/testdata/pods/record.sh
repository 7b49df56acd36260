set -ex
N=phrec-node; BPF=/sys/fs/bpf/ph-rec
ip netns add $N
ip -n $N link set lo up
ip -n $N link add dp_host type veth peer name dp_net
  ip -n $N link set dp_net up
ip -n $N addr add 10.244.1.1/32 dev dp_host
ip -n $N link set dp_host up
ip -n $N link add uplink0 type veth peer name uplink1
ip -n $N addr add 172.31.0.1/24 dev uplink0
ip -n $N link set uplink0 up
mkdir -p $BPF/pods/maps $BPF/pods/links
bpftool map create $BPF/pods/maps/dp_endpoints type hash key 4 value 20 entries 256 name dp_endpoints
bpftool map create $BPF/pods/maps/dp_ipcache type hash key 4 value 8 entries 1024 name dp_ipcache
pod() { # name addr veth
  P=phrec-$1
  ip netns add $P
  ip -n $P link set lo up
  ip -n $N link add $3 type veth peer name eth0 netns $P
  ip netns exec $N sysctl -qw net.ipv4.conf.$3.arp_ignore=0
  ip -n $N link set $3 up
  ip -n $P addr add $2/32 dev eth0
  ip -n $P link set eth0 up
  ip -n $P route add 10.244.1.1/32 dev eth0 scope link
  ip -n $P route add default via 10.244.1.1 dev eth0
  PODMAC=$(ip -n $P -j link show eth0 | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["address"])')
  HOSTMAC=$(ip -n $N -j link show $3 | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["address"])')
  IFX=$(ip -n $N -j link show $3 | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["ifindex"])')
  ip -n $N route add $2/32 dev $3 scope link
  ip -n $N neigh add $2 lladdr $PODMAC dev $3 nud permanent
  ip netns exec $N tc qdisc add dev $3 clsact
  ip netns exec $N tc filter add dev $3 ingress bpf da obj /tmp/ph-rec/prog.o sec tc
  KEY=$(echo $2 | tr . ' ' | xargs printf '%d %d %d %d')
  hx() { echo $1 | tr : ' ' | sed 's/\([0-9a-f][0-9a-f]\)/0x\1/g'; }
  IFB=$(python3 -c "import struct;print(' '.join(str(b) for b in struct.pack('<I',$IFX)))")
  bpftool map update pinned $BPF/pods/maps/dp_endpoints key $KEY value $IFB $(hx $PODMAC) $(hx $HOSTMAC) 0 0 0 0
  ip netns exec $P ping -c1 -W2 10.244.1.1
}
pod web-a1 10.244.0.7 lxcweb-a1
pod client-a 10.244.0.9 lxcclient-a
# a remote pod on node-b (172.31.0.2)
bpftool map update pinned $BPF/pods/maps/dp_ipcache key 10 244 0 12 value 172 31 0 2 0 0 0 0
ip -n $N route add 10.244.0.12/32 via 172.31.0.2 dev uplink0
