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
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr, SkMsg, SockOps},
    Ebpf, EbpfLoader,
};
use datapath_common::{
    AccelConfig, Meta, ACCEL_MAX_CIDRS, GLOBAL_FAST_REFUSE, GLOBAL_MUTATIONS, INSERT_ANY,
    INSERT_NOEXIST, LAYOUT_VERSION, MAP_META, META_KEY, PROG_SKMSG,
};
use tracing::{info, warn};

use crate::{
    cgroup::{Cgroup, CgroupError},
    failpoint::{Failpoint, Failpoints, MAP_ORDER},
    hooks::Hook,
    layout::{self, Layout},
    maps::{AccelMaps, BpfMap, DpMaps, MapError, MapSpec, Sizes},
    masq::Cidr,
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
    #[error("at most {ACCEL_MAX_CIDRS} --accelerate prefixes are supported, got {0}")]
    TooManyPrefixes(usize),
    #[error("attaching {PROG_SKMSG} to dp_sockhash (BPF_SK_MSG_VERDICT)")]
    AttachSkMsg(#[source] SysError),
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
    /// Prefixes whose connections are accelerated (both ends in one of them).
    pub accelerate: &'a [Cidr],
    /// The cgroup hooks to load and attach (getpeername4 is left out on kernels without
    /// it; see features.rs).
    pub hooks: &'a [Hook],
    /// Whether the programs may call `bpf_set_retval` (ECONNREFUSED instead of EPERM).
    pub fast_refuse: bool,
}

/// A started datapath: programs attached, maps ready to program.
pub struct Started {
    /// Keeps the loaded programs' fds for the agent's lifetime.
    pub _ebpf: Ebpf,
    pub maps: DpMaps,
    pub accel: AccelMaps,
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

    // Declared before the loader, which borrows it.
    let mutations = opts.mutant.map(Mutant::bpf_mutations).unwrap_or(0);
    let mut loader = EbpfLoader::new();
    let pins: Vec<_> = specs
        .iter()
        .map(|s| (s.name, opts.layout.map_pin(s.name)))
        .collect();
    for spec in specs.iter().filter(|s| s.name != MAP_META) {
        loader.map_max_entries(spec.name, spec.max_entries);
    }
    if !opts.fast_refuse {
        loader.override_global(GLOBAL_FAST_REFUSE, &0u32, true);
        info!("bpf_set_retval unavailable: a service without backends answers EPERM");
    }
    if mutations != 0 {
        loader.override_global(GLOBAL_MUTATIONS, &mutations, true);
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

    if opts.accelerate.len() > ACCEL_MAX_CIDRS {
        return Err(LoadError::TooManyPrefixes(opts.accelerate.len()));
    }
    for &hook in opts.hooks {
        load_hook(&mut ebpf, hook)?;
        info!(program = hook.program(), "loaded");
        fp.hit(Failpoint::AfterLoad(hook));
    }
    skmsg(&mut ebpf)?.load().map_err(|source| LoadError::Load {
        program: PROG_SKMSG,
        source,
    })?;
    info!(program = PROG_SKMSG, "loaded");
    fp.hit(Failpoint::AfterLoadSkMsg);

    let maps = program_maps(&mut ebpf)?;
    let accel = accel_maps(&mut ebpf)?;
    if !legacy {
        check_pinned_maps(opts.layout, &maps, &accel)?;
    }

    // Socket acceleration: the scope first, then dp_skmsg on the map, and only then (with
    // the cgroup hooks below) dp_sockops, so no socket enters the map before the sk_msg
    // program is there to redirect its messages.
    let config = accel_config(opts.accelerate, opts.mutant);
    accel.accel.put(&0u32, &config)?;
    info!(
        prefixes = ?opts.accelerate.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        insert = if config.insert_flags == INSERT_NOEXIST { "BPF_NOEXIST" } else { "BPF_ANY" },
        "socket acceleration configured"
    );
    let skmsg_fd = skmsg_fd(&mut ebpf)?;
    // A legacy attach to the map (the attachment lives as long as the map); on a reused
    // pinned map it replaces the previous agent's program.
    sys::prog_attach(
        accel.sockhash.fd(),
        skmsg_fd.as_fd(),
        aya_obj::generated::bpf_attach_type::BPF_SK_MSG_VERDICT as u32,
        0,
    )
    .map_err(LoadError::AttachSkMsg)?;
    info!(
        program = PROG_SKMSG,
        map = accel.sockhash.info.id,
        "attached to dp_sockhash"
    );
    fp.hit(Failpoint::AfterAttachSkMsg);

    for &hook in opts.hooks {
        if legacy {
            attach_legacy(&mut ebpf, opts.cgroup, hook)?;
            fp.hit(Failpoint::AfterAttach(hook));
            fp.hit(Failpoint::AfterPinLink(hook));
        } else {
            attach_linked(&mut ebpf, opts.cgroup, opts.layout, hook, fp)?;
        }
    }
    Ok(Started {
        _ebpf: ebpf,
        maps,
        accel,
    })
}

/// `dp_accel[0]` for these prefixes (the mutant inserts with `BPF_NOEXIST`).
pub fn accel_config(prefixes: &[Cidr], mutant: Option<Mutant>) -> AccelConfig {
    let mut c = AccelConfig {
        count: prefixes.len().min(ACCEL_MAX_CIDRS) as u32,
        insert_flags: if mutant == Some(Mutant::SockmapNoexist) {
            INSERT_NOEXIST
        } else {
            INSERT_ANY
        },
        ..AccelConfig::default()
    };
    for (i, p) in prefixes.iter().take(ACCEL_MAX_CIDRS).enumerate() {
        (c.nets[i], c.masks[i]) = p.raw();
    }
    c
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

fn sockops(ebpf: &mut Ebpf) -> Result<&mut SockOps, LoadError> {
    let name = Hook::SockOps.program();
    let prog = ebpf.program_mut(name).ok_or(LoadError::NoProgram(name))?;
    prog.try_into().map_err(|source| LoadError::Load {
        program: name,
        source,
    })
}

fn skmsg(ebpf: &mut Ebpf) -> Result<&mut SkMsg, LoadError> {
    let prog = ebpf
        .program_mut(PROG_SKMSG)
        .ok_or(LoadError::NoProgram(PROG_SKMSG))?;
    prog.try_into().map_err(|source| LoadError::Load {
        program: PROG_SKMSG,
        source,
    })
}

fn load_hook(ebpf: &mut Ebpf, hook: Hook) -> Result<(), LoadError> {
    let result = match hook {
        Hook::SockOps => sockops(ebpf)?.load(),
        _ => program(ebpf, hook)?.load(),
    };
    result.map_err(|source| LoadError::Load {
        program: hook.program(),
        source,
    })
}

fn dup(fd: std::os::fd::BorrowedFd<'_>, hook: Hook) -> Result<OwnedFd, LoadError> {
    fd.try_clone_to_owned().map_err(|io_error| LoadError::Link {
        what: "duplicating the program fd".into(),
        hook,
        source: SysError {
            call: "dup",
            io_error,
        },
    })
}

fn prog_fd(ebpf: &mut Ebpf, hook: Hook) -> Result<OwnedFd, LoadError> {
    let err = |source| LoadError::Load {
        program: hook.program(),
        source,
    };
    match hook {
        Hook::SockOps => {
            let prog = sockops(ebpf)?;
            dup(prog.fd().map_err(err)?.as_fd(), hook)
        }
        _ => {
            let prog = program(ebpf, hook)?;
            dup(prog.fd().map_err(err)?.as_fd(), hook)
        }
    }
}

fn skmsg_fd(ebpf: &mut Ebpf) -> Result<OwnedFd, LoadError> {
    let prog = skmsg(ebpf)?;
    let fd = prog.fd().map_err(|source| LoadError::Load {
        program: PROG_SKMSG,
        source,
    })?;
    fd.as_fd().try_clone_to_owned().map_err(|io_error| {
        LoadError::AttachSkMsg(SysError {
            call: "dup",
            io_error,
        })
    })
}

/// A new link of `hook`'s program on the cgroup (`bpf_link_create`).
fn attach_new_link(ebpf: &mut Ebpf, cgroup: &Cgroup, hook: Hook) -> Result<FdLink, LoadError> {
    let attach_err = |source| LoadError::Attach {
        program: hook.program(),
        hook,
        source,
    };
    let fd_link = |r: Result<FdLink, aya::programs::links::LinkError>| {
        r.map_err(|source| LoadError::NotFdLink { hook, source })
    };
    match hook {
        Hook::SockOps => {
            let prog = sockops(ebpf)?;
            let id = prog
                .attach(cgroup.fd(), CgroupAttachMode::Single)
                .map_err(attach_err)?;
            fd_link(prog.take_link(id).map_err(attach_err)?.try_into())
        }
        _ => {
            let prog = program(ebpf, hook)?;
            let id = prog
                .attach(cgroup.fd(), CgroupAttachMode::Single)
                .map_err(attach_err)?;
            fd_link(prog.take_link(id).map_err(attach_err)?.try_into())
        }
    }
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

/// The maps the loaded sock_ops program uses (dp_skmsg shares dp_sockhash and the stats).
fn accel_maps(ebpf: &mut Ebpf) -> Result<AccelMaps, LoadError> {
    let fd = prog_fd(ebpf, Hook::SockOps)?;
    let info = sys::prog_info(fd.as_fd()).map_err(|source| LoadError::Link {
        what: "reading program info".into(),
        hook: Hook::SockOps,
        source,
    })?;
    Ok(AccelMaps::from_map_ids(info.id, &info.map_ids)?)
}

/// The programs must read exactly the pinned maps.
fn check_pinned_maps(layout: &Layout, maps: &DpMaps, accel: &AccelMaps) -> Result<(), LoadError> {
    let all = [
        (Hook::Connect4, &maps.services),
        (Hook::Connect4, &maps.slots),
        (Hook::Connect4, &maps.backends),
        (Hook::Connect4, &maps.revnat),
        (Hook::SockOps, &accel.sockhash),
        (Hook::SockOps, &accel.accel),
        (Hook::SockOps, &accel.stats),
    ];
    for (hook, m) in all {
        let pinned = BpfMap::open_pin(&layout.map_pin(&m.info.name))?;
        if pinned.info.id != m.info.id {
            return Err(LoadError::WrongMap {
                program: hook.program(),
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
            let link = attach_new_link(ebpf, cgroup, hook)?;
            fp.hit(Failpoint::AfterAttach(hook));
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
