//! Attaching our tc programs so that the attachment outlives the agent and a restart takes
//! it over: a tcx link pinned at a path of ours (kernel 6.6+), whose program a restart
//! swaps atomically (`BPF_LINK_UPDATE`), or a clsact filter at a fixed priority and handle,
//! which a restart replaces in place (netlink without `NLM_F_EXCL`). The masquerade
//! (uplink) and the pods (host veths, `dp_vxlan`) attach through here.

use std::{os::fd::AsFd, path::Path};

use aya::programs::{
    links::FdLink,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    LinkOrder, SchedClassifier, TcAttachType,
};
use tracing::{info, warn};

use crate::{
    layout,
    sys::{self, Obj, SysError},
};

#[derive(Debug, thiserror::Error)]
pub enum TcAttachError {
    #[error("{what} ({program})")]
    Program {
        what: &'static str,
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{what} ({program})")]
    Link {
        what: &'static str,
        program: &'static str,
        #[source]
        source: SysError,
    },
    #[error("pinning the {program} link at {path}")]
    PinLink {
        program: &'static str,
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("removing pin {path}")]
    Unpin {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("adding the clsact qdisc to {device}")]
    Qdisc {
        device: String,
        #[source]
        source: tc::TcError,
    },
}

/// Where and how one program is attached.
pub struct Hook<'a> {
    pub device: &'a str,
    pub direction: TcAttachType,
    /// The program's name, for messages.
    pub program: &'static str,
}

/// Attaches `prog` with tcx, keeping one link pinned at `pin`: a pinned link of ours
/// whose program is on `hook` gets `prog` atomically (nothing when it runs `prog`
/// already); any other pinned link is detached and replaced by a new one.
pub fn attach_tcx(
    prog: &mut SchedClassifier,
    hook: &Hook<'_>,
    pin: &Path,
) -> Result<(), TcAttachError> {
    let Hook {
        device,
        direction,
        program,
    } = *hook;
    let prog_err = |what| {
        move |source| TcAttachError::Program {
            what,
            program,
            source,
        }
    };
    let link_err = |what| {
        move |source| TcAttachError::Link {
            what,
            program,
            source,
        }
    };
    if pin.symlink_metadata().is_ok() {
        let on_device: Vec<u32> = SchedClassifier::query_tcx(device, direction)
            .map(|(_, progs)| progs.iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        let new = prog.fd().map_err(prog_err("program fd"))?;
        let new_id = sys::prog_info(new.as_fd())
            .map(|i| i.id)
            .map_err(link_err("reading the program's info"))?;
        let current = sys::obj_get(pin).and_then(|fd| sys::link_info(fd.as_fd()).map(|i| (fd, i)));
        match current {
            Ok((_, info)) if info.prog_id == new_id && on_device.contains(&new_id) => return Ok(()),
            Ok((fd, info)) if on_device.contains(&info.prog_id) => {
                let old = sys::fd_by_id(Obj::Prog, info.prog_id)
                    .map_err(link_err("opening the link's current program"))?;
                sys::link_update(fd.as_fd(), new.as_fd(), old.as_fd())
                    .map_err(link_err("updating the pinned tcx link"))?;
                info!(
                    program,
                    device,
                    link_id = info.id,
                    old_prog = info.prog_id,
                    "updated pinned tcx link"
                );
                return Ok(());
            }
            Ok((fd, info)) => {
                warn!(
                    program,
                    link_id = info.id,
                    "pinned tcx link is not on {device}; replacing it"
                );
                let _ = sys::link_detach(fd.as_fd());
            }
            Err(e) => warn!(program, "pinned tcx link unusable ({e}); replacing it"),
        }
        unpin(pin)?;
    }
    let id = prog
        .attach_with_options(
            device,
            direction,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(prog_err("attaching with tcx"))?;
    let link = prog
        .take_link(id)
        .map_err(prog_err("taking the tcx link"))?;
    let link: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| TcAttachError::Link {
            what: "the tcx attachment is not a bpf_link",
            program,
            source: SysError {
                call: "tcx link",
                io_error: std::io::Error::other(e.to_string()),
            },
        })?;
    link.pin(pin).map_err(|source| TcAttachError::PinLink {
        program,
        path: pin.display().to_string(),
        source,
    })?;
    info!(program, device, pin = %pin.display(), "attached and pinned a tcx link");
    Ok(())
}

/// Attaches `prog` as a clsact filter at `priority`/`handle` on `hook` (adding the qdisc
/// if needed), replacing in place a filter an earlier run left there. The filter outlives
/// the agent.
pub fn attach_clsact(
    prog: &mut SchedClassifier,
    hook: &Hook<'_>,
    priority: u16,
    handle: u32,
) -> Result<(), TcAttachError> {
    let Hook {
        device,
        direction,
        program,
    } = *hook;
    match tc::qdisc_add_clsact(device) {
        Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
        // An earlier run (or someone else) added it: EEXIST somewhere in the chain.
        Err(e) if is_eexist(&e) => {}
        Err(source) => {
            return Err(TcAttachError::Qdisc {
                device: device.to_string(),
                source,
            })
        }
    }
    let prog_err = |what| {
        move |source| TcAttachError::Program {
            what,
            program,
            source,
        }
    };
    let handle = TcHandle::from(handle);
    // Replace our filter in place if an earlier run left it (atomic for the traffic)...
    let replaced = SchedClassifierLink::attached(device, direction, priority, handle, None)
        .ok()
        .and_then(|old| prog.attach_to_link(old).ok());
    let id = match replaced {
        Some(id) => id,
        // ... or create it.
        None => prog
            .attach_with_options(
                device,
                direction,
                TcAttachOptions::Netlink(NlOptions {
                    priority,
                    handle,
                    classid: None,
                }),
            )
            .map_err(prog_err("attaching a clsact filter"))?,
    };
    // The filter must outlive the agent: take the link out of the program and forget it
    // (dropping it would delete the filter). Cleanup removes it by name.
    let link = prog
        .take_link(id)
        .map_err(prog_err("taking the clsact link"))?;
    std::mem::forget(link);
    Ok(())
}

/// Detaches and unpins the tcx link pinned at `pin`; false when there was none.
pub fn drop_tcx_pin(pin: &Path) -> Result<bool, TcAttachError> {
    if pin.symlink_metadata().is_err() {
        return Ok(false);
    }
    if let Ok(fd) = sys::obj_get(pin) {
        let _ = sys::link_detach(fd.as_fd());
    }
    unpin(pin)
}

fn unpin(pin: &Path) -> Result<bool, TcAttachError> {
    layout::unpin(pin).map_err(|source| TcAttachError::Unpin {
        path: pin.display().to_string(),
        source,
    })
}

fn is_eexist(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EEXIST))
            || err.to_string().contains("File exists")
        {
            return true;
        }
        cur = err.source();
    }
    false
}
