//! `datapathd pod add|del`: the CNI plugin's half. `add` makes the veth and the pod side
//! (address, routes, MTU from `dp_host`), writes `DIR/NAME.json` and waits for the agent's
//! wired record; `del` removes the file and waits until the agent removed everything.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    devices,
    files::{self, PodFile, PodName, Wired},
    ip::{self, Ns},
};

/// How often `pod add|del` look for the agent's answer.
const WAIT_STEP: Duration = Duration::from_millis(50);

pub struct AddArgs {
    pub pods: PathBuf,
    pub name: PodName,
    pub netns: PathBuf,
    pub addr: Ipv4Addr,
    pub cgroup: Option<PathBuf>,
    pub timeout: Duration,
}

pub fn add(a: &AddArgs) -> Result<Wired> {
    let file = files::pod_path(&a.pods, &a.name);
    if file.exists() {
        bail!(
            "pod {} already exists ({}): `pod del` it first",
            a.name,
            file.display()
        );
    }
    if !a.netns.exists() {
        bail!("network namespace {} does not exist", a.netns.display());
    }
    let (gateway, mtu) = devices::gateway_and_mtu()
        .context("reading dp_host")?
        .with_context(|| format!("no {} with a /32 gateway in this network namespace: is `datapathd run --routing` running here?", devices::HOST_DEV))?;
    let veth = a.name.host_veth();
    if ip::link(Ns::Here, &veth)?.is_some() {
        bail!(
            "host veth {veth} of pod {} exists already (a half-made pod? `pod del` it)",
            a.name
        );
    }
    let made = make_veth(a, &veth, gateway, mtu);
    let pod_mac = match made {
        Ok(m) => m,
        Err(e) => {
            ip::ip_quiet(&["link", "del", &veth]);
            return Err(e);
        }
    };
    let pod = PodFile {
        name: a.name.clone(),
        address: a.addr,
        netns: a.netns.clone(),
        host_veth: veth.clone(),
        pod_mac,
        cgroup: a.cgroup.clone(),
    };
    files::write_atomic(&file, &pod)?;
    let ifindex = ip::link(Ns::Here, &veth)?.map_or(0, |l| l.ifindex);
    let wired = wait(a.timeout, || {
        files::read_json::<Wired>(&files::wired_path(&a.pods, &a.name), "wired record")
            .ok()
            .flatten()
            .filter(|w| w.ifindex == ifindex && w.address == a.addr)
    });
    match wired {
        Some(w) => Ok(w),
        None => {
            let _ = std::fs::remove_file(&file);
            ip::ip_quiet(&["link", "del", &veth]);
            bail!(
                "the agent did not wire pod {} within {:?} (is `datapathd run --routing --pods {}` running in this network namespace?); removed its veth and file",
                a.name,
                a.timeout,
                a.pods.display()
            )
        }
    }
}

/// The veth pair, the pod end moved into the pod as `eth0` with ADDR/32, `lo` up, a route
/// to the gateway and the default route through it; the pod end's MAC.
fn make_veth(a: &AddArgs, veth: &str, gateway: Ipv4Addr, mtu: u32) -> Result<String> {
    let peer = a.name.temp_peer();
    let mtu = mtu.to_string();
    ip::ip(&[
        "link", "add", veth, "mtu", &mtu, "type", "veth", "peer", "name", &peer, "mtu", &mtu,
    ])?;
    let netns = a.netns.display().to_string();
    ip::ip(&["link", "set", &peer, "netns", &netns])?;
    let pod = Ns::Pod(&a.netns);
    let gw = gateway.to_string();
    let addr = format!("{}/32", a.addr);
    for args in [
        vec!["link", "set", &peer, "name", "eth0"],
        vec!["addr", "add", &addr, "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
        vec!["link", "set", "lo", "up"],
        vec!["route", "add", &gw, "dev", "eth0", "scope", "link"],
        vec!["route", "add", "default", "via", &gw, "dev", "eth0"],
    ] {
        ip::run_in(pod, "ip", &args)?;
    }
    // Before the host end is up, so the kernel never answers an ARP there.
    ip::sysctl(&format!("net/ipv4/conf/{veth}/arp_ignore"), "1")
        .with_context(|| format!("setting arp_ignore on {veth}"))?;
    ip::ip(&["link", "set", veth, "up"])?;
    let mac = ip::link(pod, "eth0")?
        .and_then(|l| l.address)
        .context("the pod's eth0 has no MAC")?;
    Ok(mac)
}

/// `pod del`: true when there was such a pod.
pub fn del(dir: &Path, name: &PodName, timeout: Duration) -> Result<bool> {
    let file = files::pod_path(dir, name);
    let record = files::wired_path(dir, name);
    let veth = name.host_veth();
    let known = file.exists() || record.exists();
    if !known {
        // A veth a failed `add` left without a file: no agent knows it, remove it here.
        return Ok(ip::link(Ns::Here, &veth)?.is_some() && ip::ip_quiet(&["link", "del", &veth]));
    }
    match std::fs::remove_file(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
    }
    let gone = wait(timeout, || {
        (!record.exists() && matches!(ip::link(Ns::Here, &veth), Ok(None))).then_some(())
    });
    if gone.is_none() {
        bail!(
            "the agent did not remove pod {name} within {timeout:?} (record {} present: {}, veth {veth} present: {})",
            record.display(),
            record.exists(),
            !matches!(ip::link(Ns::Here, &veth), Ok(None))
        );
    }
    Ok(true)
}

fn wait<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(WAIT_STEP);
    }
}
