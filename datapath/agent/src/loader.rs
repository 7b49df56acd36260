//! The restart-safe start sequence (incident A in shared/DESIGN.md; Cilium 1.14's
//! socket-LB as the anchor):
//!
//! 1. Maps: a pinned map is reused only if `dp_meta` vouches for its layout version and
//!    its type, key size, value size and max entries match; anything else is unpinned and
//!    recreated. `dp_meta` is pinned last, so a crash mid-way leaves no stale vouching.
//! 2. Programs are loaded (aya), reading the pinned maps.
//! 3. Per hook: a pinned link at `links/<hook>` on our cgroup gets the new program
//!    atomically (`BPF_LINK_UPDATE` + `BPF_F_REPLACE`); a pinned link whose cgroup is gone
//!    (or that is not what it should be) is unpinned and recreated; with no usable pin,
//!    programs of ours still attached to the cgroup (legacy attachments, stray links) are
//!    detached, then a new link is created and pinned. Pinning is the commit point: an
//!    unpinned link dies with a crashed agent.
//!
//! After any start, even one following a crash at any step, exactly one program of ours
//! runs per hook, and it reads the pinned maps.

use std::os::fd::{AsFd, OwnedFd};

use aya::{
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr},
    Ebpf, EbpfLoader,
};
use datapath_common::{Meta, LAYOUT_VERSION, MAP_META, META_KEY};
use tracing::{info, warn};

use crate::{
    cgroup::{Cgroup, CgroupError},
    failpoint::{Failpoint, Failpoints, MAP_ORDER},
    hooks::Hook,
    layout::{self, Layout},
    maps::{BpfMap, DpMaps, MapError, MapSpec, Sizes},
    mutant::Mutant,
    sys::{self, Obj, SysError, BPF_LINK_TYPE_CGROUP},
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this datapathd was built with AYA_BUILD_SKIP=1 and embeds no eBPF object; rebuild without it to run the datapath")]
    EmptyObject,
    #[error("cannot create the pin directories under {path}")]
    Dirs {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove pin {path}")]
    Unpin {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("loading the eBPF object")]
    Object(#[source] aya::EbpfError),
    #[error("the eBPF object has no program {0}")]
    NoProgram(&'static str),
    #[error("loading program {program} (is the kernel too old for this hook?)")]
    Load {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching {program} to the cgroup ({hook})")]
    Attach {
        program: &'static str,
        hook: Hook,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the {hook} attachment is not a bpf_link (kernel older than 5.7?)")]
    NotFdLink {
        hook: Hook,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning the {hook} link at {path}")]
    PinLink {
        hook: Hook,
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{what} ({hook})")]
    Link {
        what: String,
        hook: Hook,
        #[source]
        source: SysError,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("program {program} uses map {map} id {used}, but the pin holds id {pinned}")]
    WrongMap {
        program: &'static str,
        map: String,
        used: u32,
        pinned: u32,
    },
}

/// What a start needs to know.
pub struct StartOptions<'a> {
    pub layout: &'a Layout,
    pub cgroup: &'a Cgroup,
    pub sizes: Sizes,
    pub mutant: Option<Mutant>,
    pub failpoints: Failpoints,
}

/// A started datapath: programs attached, maps ready to program.
pub struct Started {
    /// Keeps the loaded programs' fds for the agent's lifetime.
    pub _ebpf: Ebpf,
    pub maps: DpMaps,
}

pub fn start(object: &[u8], opts: &StartOptions<'_>) -> Result<Started, LoadError> {
    if object.is_empty() {
        return Err(LoadError::EmptyObject);
    }
    let legacy = opts.mutant == Some(Mutant::StaleCgroupProg);
    let fp = opts.failpoints;

    let specs: Vec<MapSpec> = MAP_ORDER
        .iter()
        .filter_map(|name| MapSpec::of(name, opts.sizes))
        .collect();
    if !legacy {
        opts.layout
            .create_dirs()
            .map_err(|source| LoadError::Dirs {
                path: opts.layout.root().display().to_string(),
                source,
            })?;
        prepare_maps(opts.layout, &specs, fp)?;
    }

    let mut loader = EbpfLoader::new();
    let pins: Vec<_> = specs
        .iter()
        .map(|s| (s.name, opts.layout.map_pin(s.name)))
        .collect();
    for spec in specs.iter().filter(|s| s.name != MAP_META) {
        loader.map_max_entries(spec.name, spec.max_entries);
    }
    if !legacy {
        for (name, pin) in pins.iter().filter(|(n, _)| *n != MAP_META) {
            loader.map_pin_path(name, pin.as_path());
        }
    }
    let mut ebpf = loader.load(object).map_err(LoadError::Object)?;
    if legacy {
        // The mutant's maps are created, unpinned, by the load above.
        for name in MAP_ORDER {
            fp.hit(Failpoint::AfterPinMap(name));
        }
    }

    for hook in Hook::ALL {
        let prog = program(&mut ebpf, hook)?;
        prog.load().map_err(|source| LoadError::Load {
            program: hook.program(),
            source,
        })?;
        info!(program = hook.program(), "loaded");
        fp.hit(Failpoint::AfterLoad(hook));
    }

    let maps = program_maps(&mut ebpf)?;
    if !legacy {
        check_pinned_maps(opts.layout, &maps)?;
    }

    for hook in Hook::ALL {
        if legacy {
            attach_legacy(&mut ebpf, opts.cgroup, hook)?;
            fp.hit(Failpoint::AfterAttach(hook));
            fp.hit(Failpoint::AfterPinLink(hook));
        } else {
            attach_linked(&mut ebpf, opts.cgroup, opts.layout, hook, fp)?;
        }
    }
    Ok(Started { _ebpf: ebpf, maps })
}

fn program(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut CgroupSockAddr, LoadError> {
    let prog = ebpf
        .program_mut(hook.program())
        .ok_or(LoadError::NoProgram(hook.program()))?;
    prog.try_into().map_err(|source| LoadError::Load {
        program: hook.program(),
        source,
    })
}

fn prog_fd(ebpf: &mut Ebpf, hook: Hook) -> Result<OwnedFd, LoadError> {
    let prog = program(ebpf, hook)?;
    let fd = prog.fd().map_err(|source| LoadError::Load {
        program: hook.program(),
        source,
    })?;
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|io_error| LoadError::Link {
            what: "duplicating the program fd".into(),
            hook,
            source: SysError {
                call: "dup",
                io_error,
            },
        })
}

/// Step 1: make every map pin valid for this agent (see the module docs).
fn prepare_maps(layout: &Layout, specs: &[MapSpec], fp: Failpoints) -> Result<(), LoadError> {
    let unpin = |path: &std::path::Path| {
        layout::unpin(path).map_err(|source| LoadError::Unpin {
            path: path.display().to_string(),
            source,
        })
    };
    let meta_spec = specs
        .iter()
        .find(|s| s.name == MAP_META)
        .copied()
        .ok_or(LoadError::NoProgram(MAP_META))?;
    let meta_pin = layout.map_pin(MAP_META);
    let meta_verdict = check_meta(&meta_pin, &meta_spec);
    if let Err(reason) = &meta_verdict {
        if unpin(&meta_pin)? {
            warn!(map = MAP_META, %reason, "pinned maps cannot be vouched for; replacing them");
        }
    }

    for spec in specs.iter().filter(|s| s.name != MAP_META) {
        let pin = layout.map_pin(spec.name);
        let reuse = if pin.symlink_metadata().is_ok() {
            let verdict = match (&meta_verdict, BpfMap::open_pin(&pin)) {
                (Err(reason), _) => Err(reason.clone()),
                (Ok(()), Err(e)) => Err(format!("cannot open it: {e}")),
                (Ok(()), Ok(m)) => spec.mismatch(&m.info).map_or(Ok(()), Err),
            };
            match verdict {
                Ok(()) => true,
                Err(reason) => {
                    warn!(map = spec.name, %reason, "replacing pinned map");
                    unpin(&pin)?;
                    false
                }
            }
        } else {
            false
        };
        if reuse {
            info!(map = spec.name, "reusing pinned map");
        } else {
            BpfMap::create(spec)?.pin(&pin)?;
            info!(map = spec.name, pin = %pin.display(), "created and pinned map");
        }
        fp.hit(Failpoint::AfterPinMap(spec.name));
    }

    if meta_verdict.is_err() {
        let meta = BpfMap::create(&meta_spec)?;
        meta.put(
            &META_KEY,
            &Meta {
                layout_version: LAYOUT_VERSION,
                reserved: 0,
            },
        )?;
        meta.pin(&meta_pin)?;
        info!(
            map = MAP_META,
            layout_version = LAYOUT_VERSION,
            "created and pinned map"
        );
    }
    fp.hit(Failpoint::AfterPinMap(MAP_META));
    Ok(())
}

/// Ok when the pinned `dp_meta` exists, has the expected shape and our layout version.
fn check_meta(pin: &std::path::Path, spec: &MapSpec) -> Result<(), String> {
    if pin.symlink_metadata().is_err() {
        return Err("no dp_meta pin".into());
    }
    let meta = BpfMap::open_pin(pin).map_err(|e| format!("cannot open dp_meta: {e}"))?;
    if let Some(reason) = spec.mismatch(&meta.info) {
        return Err(format!("dp_meta: {reason}"));
    }
    match meta.get::<u32, Meta>(&META_KEY) {
        Ok(Some(m)) if m.layout_version == LAYOUT_VERSION => Ok(()),
        Ok(Some(m)) => Err(format!(
            "layout version {} in dp_meta, this agent writes {LAYOUT_VERSION}",
            m.layout_version
        )),
        Ok(None) => Err("dp_meta is empty".into()),
        Err(e) => Err(format!("cannot read dp_meta: {e}")),
    }
}

/// The maps the loaded connect4 program uses (all four programs share them).
fn program_maps(ebpf: &mut Ebpf) -> Result<DpMaps, LoadError> {
    let fd = prog_fd(ebpf, Hook::Connect4)?;
    let info = sys::prog_info(fd.as_fd()).map_err(|source| LoadError::Link {
        what: "reading program info".into(),
        hook: Hook::Connect4,
        source,
    })?;
    Ok(DpMaps::from_map_ids(info.id, &info.map_ids)?)
}

/// The programs must read exactly the pinned maps.
fn check_pinned_maps(layout: &Layout, maps: &DpMaps) -> Result<(), LoadError> {
    for m in [&maps.services, &maps.slots, &maps.backends, &maps.revnat] {
        let pinned = BpfMap::open_pin(&layout.map_pin(&m.info.name))?;
        if pinned.info.id != m.info.id {
            return Err(LoadError::WrongMap {
                program: Hook::Connect4.program(),
                map: m.info.name.clone(),
                used: m.info.id,
                pinned: pinned.info.id,
            });
        }
    }
    Ok(())
}

/// What the pin at `links/<hook>` holds, judged against our cgroup.
enum PinnedLink {
    None,
    /// On our cgroup and hook: update its program.
    Ours {
        fd: OwnedFd,
        prog_id: u32,
        link_id: u32,
    },
    /// Unusable (cgroup gone, another cgroup, not a cgroup link): unpin and recreate.
    Stale {
        fd: Option<OwnedFd>,
        reason: String,
    },
}

fn pinned_link(
    path: &std::path::Path,
    cgroup: &Cgroup,
    hook: Hook,
) -> Result<PinnedLink, LoadError> {
    if path.symlink_metadata().is_err() {
        return Ok(PinnedLink::None);
    }
    let fd = match sys::obj_get(path) {
        Ok(fd) => fd,
        Err(e) => {
            return Ok(PinnedLink::Stale {
                fd: None,
                reason: format!("cannot open it: {e}"),
            })
        }
    };
    let info = match sys::link_info(fd.as_fd()) {
        Ok(i) => i,
        Err(e) => {
            return Ok(PinnedLink::Stale {
                fd: None,
                reason: format!("not a link: {e}"),
            })
        }
    };
    let reason = if info.link_type != BPF_LINK_TYPE_CGROUP || info.attach_type != hook.attach_type()
    {
        Some(format!(
            "link type {} attach type {} is not a cgroup {hook} link",
            info.link_type, info.attach_type
        ))
    } else if info.cgroup_id == 0 {
        Some("its cgroup is gone".to_string())
    } else if info.cgroup_id != cgroup.id {
        Some(format!(
            "it is attached to cgroup id {}, not {} ({})",
            info.cgroup_id,
            cgroup.id,
            cgroup.path.display()
        ))
    } else {
        None
    };
    Ok(match reason {
        Some(reason) => PinnedLink::Stale {
            fd: Some(fd),
            reason,
        },
        None => PinnedLink::Ours {
            fd,
            prog_id: info.prog_id,
            link_id: info.id,
        },
    })
}

/// Step 3 for one hook (see the module docs).
fn attach_linked(
    ebpf: &mut Ebpf,
    cgroup: &Cgroup,
    layout: &Layout,
    hook: Hook,
    fp: Failpoints,
) -> Result<(), LoadError> {
    let pin = layout.link_pin(hook);
    let new_prog = prog_fd(ebpf, hook)?;
    let link_err = |what: &str| {
        let what = what.to_string();
        move |source| LoadError::Link { what, hook, source }
    };

    let mut kept = None;
    match pinned_link(&pin, cgroup, hook)? {
        PinnedLink::None => {}
        PinnedLink::Ours {
            fd,
            prog_id,
            link_id,
        } => match update_link(&fd, new_prog.as_fd(), prog_id) {
            Ok(()) => {
                info!(%hook, link_id, old_prog = prog_id, "updated pinned link to the new program");
                kept = Some(link_id);
            }
            Err(e) if e.is(libc::ENOLINK) => {
                warn!(%hook, link_id, "pinned link's cgroup is gone; recreating it");
                layout::unpin(&pin).map_err(|source| LoadError::Unpin {
                    path: pin.display().to_string(),
                    source,
                })?;
            }
            Err(e) => return Err(link_err("updating the pinned link")(e)),
        },
        PinnedLink::Stale { fd, reason } => {
            warn!(%hook, pin = %pin.display(), %reason, "unpinning unusable link");
            if let Some(fd) = fd {
                // Detach it even if another process holds it; errors mean it is already.
                let _ = sys::link_detach(fd.as_fd());
            }
            layout::unpin(&pin).map_err(|source| LoadError::Unpin {
                path: pin.display().to_string(),
                source,
            })?;
        }
    }

    match kept {
        Some(link_id) => {
            fp.hit(Failpoint::AfterAttach(hook));
            fp.hit(Failpoint::AfterPinLink(hook));
            for a in cgroup.sweep(hook, Some(link_id))? {
                warn!(%hook, prog_id = a.prog.id, name = %a.prog.name, link = ?a.link_id, "detached a stale program of ours");
            }
        }
        None => {
            for a in cgroup.sweep(hook, None)? {
                warn!(%hook, prog_id = a.prog.id, name = %a.prog.name, link = ?a.link_id, "detached a stale program of ours");
            }
            let prog = program(ebpf, hook)?;
            let attach_err = |source| LoadError::Attach {
                program: hook.program(),
                hook,
                source,
            };
            let link_id = prog
                .attach(cgroup.fd(), CgroupAttachMode::Single)
                .map_err(attach_err)?;
            fp.hit(Failpoint::AfterAttach(hook));
            let link = prog.take_link(link_id).map_err(attach_err)?;
            let link: FdLink = link
                .try_into()
                .map_err(|source| LoadError::NotFdLink { hook, source })?;
            link.pin(&pin).map_err(|source| LoadError::PinLink {
                hook,
                path: pin.display().to_string(),
                source,
            })?;
            info!(%hook, pin = %pin.display(), "attached and pinned a new link");
            fp.hit(Failpoint::AfterPinLink(hook));
        }
    }
    Ok(())
}

/// `BPF_LINK_UPDATE` as a compare-and-swap on the link's current program; if another
/// process swapped it meanwhile (EPERM), read it again and retry.
fn update_link(
    link: &OwnedFd,
    new_prog: std::os::fd::BorrowedFd<'_>,
    mut old_prog_id: u32,
) -> Result<(), SysError> {
    let mut attempts = 0;
    loop {
        let old = sys::fd_by_id(Obj::Prog, old_prog_id)?;
        match sys::link_update(link.as_fd(), new_prog, old.as_fd()) {
            Err(e) if e.is(libc::EPERM) && attempts < 3 => {
                attempts += 1;
                old_prog_id = sys::link_info(link.as_fd())?.prog_id;
            }
            other => return other,
        }
    }
}

/// The mutant's attach: legacy, multi, never swept.
fn attach_legacy(ebpf: &mut Ebpf, cgroup: &Cgroup, hook: Hook) -> Result<(), LoadError> {
    let fd = prog_fd(ebpf, hook)?;
    sys::prog_attach(
        cgroup.fd(),
        fd.as_fd(),
        hook.attach_type(),
        aya_obj::generated::BPF_F_ALLOW_MULTI,
    )
    .map_err(|source| LoadError::Link {
        what: "legacy BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI".into(),
        hook,
        source,
    })?;
    warn!(%hook, "mutant stale-cgroup-prog: attached with legacy BPF_F_ALLOW_MULTI, no sweep");
    Ok(())
}
