//! bpffs-remount: unmount the bpffs a node's datapath directory is on and mount a fresh,
//! empty one in its place, under the running agent (a node's /sys/fs/bpf remounted by an
//! operator, an init system or a container runtime). Every pin is gone with the old
//! filesystem; the objects live on only through the fds someone holds. Proved by a marker
//! made on the old bpffs being gone, and by listing the directory right after the mount
//! (a fast agent may already have pinned some again). The heal waits
//! (bounded) for the agent to pin its objects again and proves independently (listing,
//! bpftool) that every pin is back and names the same object as before: no reload, no
//! detach. Pins that do not come back are the datapath's bug, not the fault's: the heal
//! says so and the invariants judge it (datapath-pinned). A heal after an interrupted
//! injection mounts the bpffs again if it is not there.
//!
//! On netns a node's bpffs is the provider's per-node mount (provider/netns.rs); a
//! datapath directory on a bpffs other nodes share is refused, never unmounted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Fault, FaultError, Heal, PlanContext, Site, Started};
use crate::live::Live;
use crate::node::{shell_quote, Exit, Node};
use crate::observe::bpf;
use crate::provider::Machines;
use crate::suite::FaultStep;

const NAME: &str = "bpffs-remount";
/// How long the heal waits for the agent to pin its objects again (it polls every 200 ms).
const REPIN_WITHIN: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
const CMD: Duration = Duration::from_secs(30);
/// A directory made on the old bpffs's root before the unmount; a fresh one lacks it
/// (bpffs refuses names with a dot).
const MARKER: &str = "dph-bpffs-remount-marker";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BpffsRemount {
    /// The node whose bpffs is remounted (from the seed when the step names none).
    pub node: String,
}

impl Fault for BpffsRemount {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str =
        "unmount a node's bpffs under the running agent and mount it again empty";

    fn plan(cx: &mut PlanContext<'_>, step: &FaultStep) -> Self {
        BpffsRemount {
            node: cx.node(step),
        }
    }

    fn describe(&self) -> String {
        format!(
            "node={} repin-within={}s",
            self.node,
            REPIN_WITHIN.as_secs()
        )
    }

    fn start<'m>(
        &self,
        live: &mut Live,
        machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError> {
        let node = self.node.clone();
        let site = Site::new(NAME, &node);
        let cn = site.cluster_node(live)?;
        let n: Arc<dyn Node> = cn.node.clone();
        let dir = cn.bpffs.clone();

        // 1. The bpffs the datapath directory is on: the node's own, or refused.
        let target = mount_target(n.as_ref(), &dir)?;
        if machines.is_none() && Some(target.as_path()) != dir.parent() {
            return Err(FaultError::Unsupported {
                fault: NAME,
                reason: format!(
                    "{} is on the bpffs at {}, not on a bpffs of the node's own",
                    dir.display(),
                    target.display()
                ),
            });
        }
        let before = pins(n.as_ref(), &dir)?;
        if before.is_empty() {
            return Err(site.not_proved(format!(
                "nothing is pinned under {}: is the datapath deployed?",
                dir.display()
            )));
        }
        let ids_before = pinned_ids(n.as_ref(), &dir)?;
        let marker = target.join(MARKER);

        // 2. A marker on the old bpffs, then unmount and mount again in one command: the
        //    agent polls every 200 ms, so it rarely sees the moment with no bpffs there at
        //    all. The marker gone proves a fresh filesystem (mount ids and device numbers
        //    are reused at once, so they prove nothing).
        let started = Instant::now();
        // The guard first: however the step ends from here (even the command below
        // failing midway), a bpffs is mounted there again.
        let cancel = live.cancel.clone();
        let heal_node = node.clone();
        let heal_n = n.clone();
        let (heal_target, heal_dir, heal_before) = (target.clone(), dir.clone(), before.clone());
        let heal_marker = marker.clone();
        let heal = Heal::with(NAME, move || {
            heal(
                &heal_node,
                heal_n.as_ref(),
                &Remounted {
                    target: &heal_target,
                    dir: &heal_dir,
                    marker: &heal_marker,
                    before: &heal_before,
                    ids_before: &ids_before,
                },
                &cancel,
                started,
            )
        });
        let out = run(
            n.as_ref(),
            &remount_script(&target, &dir, &marker),
            "unmounting and mounting the bpffs again",
        )?;
        if !out.success() {
            let why = match out.exit {
                Exit::Code(10) => "cannot make the marker on the old bpffs",
                Exit::Code(11) => "umount failed",
                Exit::Code(12) => "mount -t bpf failed",
                Exit::Code(13) => "the marker is still there: the old bpffs was not unmounted",
                _ => "the remount failed",
            };
            return Err(site.not_proved(format!(
                "{why} at {} ({}): {}",
                target.display(),
                out.exit,
                out.stderr_str().trim()
            )));
        }
        // Anything under a fresh bpffs was made after the mount: a fast agent's re-pins.
        let listed = out.stdout_str();
        let right_after: Vec<&str> = listed.lines().map(str::trim).collect();
        let back = before
            .iter()
            .filter(|p| right_after.contains(&p.as_str()))
            .count();
        let listing = if back == 0 {
            format!("none of its {} entries is there", before.len())
        } else {
            format!(
                "{back} of its {} entries already pinned again by the agent",
                before.len()
            )
        };
        Ok(Started {
            proof: vec![format!(
                "unmounted the bpffs at {} on {node} and mounted a fresh one (a marker made on \
                 the old one is gone); listing {} right after: {listing}",
                target.display(),
                dir.display()
            )],
            heal,
        })
    }
}

/// What a heal needs to know of the remount.
struct Remounted<'a> {
    target: &'a Path,
    dir: &'a Path,
    marker: &'a Path,
    before: &'a [String],
    ids_before: &'a BTreeMap<String, u32>,
}

/// The heal: a bpffs mounted at the target again (if an interrupted start left none),
/// then (unless interrupted) up to [`REPIN_WITHIN`] for every entry listed before to be
/// back, and the objects pinned compared with those before.
fn heal(
    node: &str,
    n: &dyn Node,
    r: &Remounted<'_>,
    cancel: &crate::signal::Cancel,
    started: Instant,
) -> Result<Vec<String>, FaultError> {
    let Remounted {
        target,
        dir,
        marker,
        before,
        ids_before,
    } = *r;
    let mut proof = Vec::new();
    let t = shell_quote(&target.to_string_lossy());
    // An interrupted start may have left the marker on a bpffs it never unmounted.
    let fstype = run(
        n,
        &format!(
            "rmdir {} 2>/dev/null; findmnt -n -o FSTYPE --mountpoint {t}",
            shell_quote(&marker.to_string_lossy())
        ),
        "looking at the mount",
    )?
    .stdout_str();
    if fstype.trim() != "bpf" {
        let out = run(
            n,
            &format!("mount -t bpf bpf {t}"),
            "mounting the bpffs again",
        )?;
        if !out.success() {
            return Err(FaultError::NotProved {
                fault: NAME,
                node: node.into(),
                what: format!(
                    "no bpffs at {} and `mount -t bpf` failed ({}): {}",
                    target.display(),
                    out.exit,
                    out.stderr_str().trim()
                ),
            });
        }
        proof.push(format!(
            "no bpffs was mounted at {}: mounted one",
            target.display()
        ));
    }
    if cancel.is_cancelled() {
        proof.push("interrupted: not waiting for the agent's pins".into());
        return Ok(proof);
    }
    let deadline = Instant::now() + REPIN_WITHIN;
    let mut missing = before.to_vec();
    let mut polls = 0;
    while !cancel.is_cancelled() {
        polls += 1;
        let now = match pins(n, dir) {
            Ok(now) => now,
            // An interrupt may take the node's channel down with it (a VM's helper is in
            // the harness's process group): stop waiting, there is nothing left to undo.
            Err(_) if cancel.is_cancelled() => break,
            Err(e) => return Err(e),
        };
        missing = before
            .iter()
            .filter(|p| !now.contains(p))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break;
        }
        cancel.sleep(POLL);
    }
    if cancel.is_cancelled() && !missing.is_empty() {
        proof.push(format!(
            "interrupted {:.1} s after the remount, before every pin was back",
            started.elapsed().as_secs_f64()
        ));
        return Ok(proof);
    }
    if !missing.is_empty() {
        proof.push(format!(
            "after {:.1} s, {} of {} entries under {} are still not there: {}",
            started.elapsed().as_secs_f64(),
            missing.len(),
            before.len(),
            dir.display(),
            shown(&missing, dir)
        ));
        return Ok(proof);
    }
    let took = started.elapsed();
    let ids_after = pinned_ids(n, dir)?;
    let changed: Vec<String> = ids_before
        .iter()
        .filter(|(p, id)| ids_after.get(*p) != Some(id))
        .map(|(p, id)| match ids_after.get(p) {
            Some(now) => format!("{p}: id {id} -> {now}"),
            None => format!("{p}: id {id} -> not listed"),
        })
        .collect();
    // The `during` checks ran between the remount and the heal: pins already back at the
    // first look came back at some point in them.
    let when = if polls == 1 {
        format!(
            "already back when the heal looked, {:.1} s after the remount",
            took.as_secs_f64()
        )
    } else {
        format!("back {:.1} s after the remount", took.as_secs_f64())
    };
    proof.push(format!(
        "all {} entries under {} {when}; {}",
        before.len(),
        dir.display(),
        if changed.is_empty() {
            format!(
                "bpftool: the same {} maps and links pinned (no reload, no detach)",
                ids_before.len()
            )
        } else {
            format!("bpftool: other objects pinned: {}", changed.join(", "))
        }
    ));
    Ok(proof)
}

/// A few of `paths`, relative to `dir`: a long list says no more than its head.
fn shown(paths: &[String], dir: &Path) -> String {
    const SHOWN: usize = 6;
    let prefix = format!("{}/", dir.display());
    let mut s = paths
        .iter()
        .take(SHOWN)
        .map(|p| p.strip_prefix(&prefix).unwrap_or(p))
        .collect::<Vec<_>>()
        .join(" ");
    if paths.len() > SHOWN {
        s.push_str(&format!(" and {} more", paths.len() - SHOWN));
    }
    s
}

fn run(n: &dyn Node, script: &str, what: &str) -> Result<crate::node::Output, FaultError> {
    n.run(&["sh", "-c", script], CMD)
        .map_err(|source| FaultError::Node {
            fault: NAME,
            node: n.name().to_owned(),
            what: what.into(),
            source: Box::new(source),
        })
}

/// Where the filesystem holding `dir` (or its nearest existing parent) is mounted; it must
/// be a bpffs.
fn mount_target(n: &dyn Node, dir: &Path) -> Result<PathBuf, FaultError> {
    let out = run(
        n,
        &format!(
            "findmnt -n -o TARGET,FSTYPE -T {}",
            shell_quote(&dir.to_string_lossy())
        ),
        "finding the bpffs mount",
    )?;
    let text = out.stdout_str();
    let mut f = text.split_whitespace();
    match (out.success(), f.next(), f.next()) {
        (true, Some(target), Some("bpf")) => Ok(PathBuf::from(target)),
        _ => Err(FaultError::NotProved {
            fault: NAME,
            node: n.name().to_owned(),
            what: format!(
                "{} is not on a bpffs: findmnt says `{}` {}",
                dir.display(),
                text.trim(),
                out.stderr_str().trim()
            ),
        }),
    }
}

/// Exit 10: no marker made; 11: umount failed (marker removed); 12: mount failed; 13:
/// the marker survived. Prints what is under `dir` right after the mount.
fn remount_script(target: &Path, dir: &Path, marker: &Path) -> String {
    let (t, d, m) = (
        shell_quote(&target.to_string_lossy()),
        shell_quote(&dir.to_string_lossy()),
        shell_quote(&marker.to_string_lossy()),
    );
    format!(
        "mkdir {m} || exit 10; if ! umount {t}; then rmdir {m}; exit 11; fi; \
         mount -t bpf bpf {t} || exit 12; [ -e {m} ] && exit 13; \
         find {d} -mindepth 1 2>/dev/null; exit 0"
    )
}

/// Every path under `dir` (directories and pins), sorted; none when `dir` is gone.
fn pins(n: &dyn Node, dir: &Path) -> Result<Vec<String>, FaultError> {
    let d = shell_quote(&dir.to_string_lossy());
    let out = run(
        n,
        &format!("find {d} -mindepth 1 2>/dev/null; true"),
        "listing the datapath directory",
    )?;
    let mut v: Vec<String> = out
        .stdout_str()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    Ok(v)
}

/// Pin path -> map or link id, for what bpftool lists pinned under `dir`.
fn pinned_ids(n: &dyn Node, dir: &Path) -> Result<BTreeMap<String, u32>, FaultError> {
    let k = bpf::kernel(n).map_err(|what| FaultError::NotProved {
        fault: NAME,
        node: n.name().to_owned(),
        what: format!("bpftool: {what}"),
    })?;
    Ok(pinned_under(&k, dir))
}

fn pinned_under(k: &bpf::Kernel, dir: &Path) -> BTreeMap<String, u32> {
    let prefix = format!("{}/", dir.display());
    let maps = k.maps.iter().map(|m| (&m.pinned, m.id));
    let links = k.links.iter().map(|l| (&l.pinned, l.id));
    maps.chain(links)
        .flat_map(|(paths, id)| {
            paths
                .iter()
                .filter(|p| p.starts_with(&prefix))
                .map(move |p| (p.clone(), id))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::bpf::{Kernel, Link, Map};

    #[test]
    fn a_long_list_of_missing_pins_shows_its_head() {
        let dir = Path::new("/b/n1/datapathd");
        let paths: Vec<String> = (0..8)
            .map(|i| format!("/b/n1/datapathd/maps/m{i}"))
            .collect();
        assert_eq!(
            shown(&paths, dir),
            "maps/m0 maps/m1 maps/m2 maps/m3 maps/m4 maps/m5 and 2 more"
        );
        assert_eq!(shown(&paths[..1], dir), "maps/m0");
    }

    #[test]
    fn only_pins_under_the_directory_are_compared() {
        let k = Kernel {
            progs: vec![],
            maps: vec![
                Map {
                    id: 7,
                    name: "dp_services".into(),
                    pinned: vec!["/b/n1/datapathd/maps/dp_services".into()],
                },
                Map {
                    id: 8,
                    name: "dp_services".into(),
                    pinned: vec!["/b/n2/datapathd/maps/dp_services".into()],
                },
            ],
            links: vec![Link {
                id: 3,
                prog_id: 30,
                pinned: vec!["/b/n1/datapathd/links/connect4".into()],
            }],
        };
        let got = pinned_under(&k, Path::new("/b/n1/datapathd"));
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![
                ("/b/n1/datapathd/links/connect4".to_string(), 3),
                ("/b/n1/datapathd/maps/dp_services".to_string(), 7),
            ]
        );
    }
}
