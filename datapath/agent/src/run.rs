//! `datapathd run`: check prerequisites, start (load, attach), fill the maps, then watch
//! the services directory and reconcile until SIGTERM/SIGINT. On exit the pinned links
//! and maps stay in place, so the datapath keeps working and the next start takes it
//! over; `datapathd cleanup` removes them.

use std::{
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    cgroup::Cgroup,
    ebpf_object,
    failpoint::{Failpoint, Failpoints},
    features::{self, Feature, Report, Requested},
    hooks::Hook,
    layout::Layout,
    loader::{self, StartOptions},
    maps::{BpfMap, DpMaps, Sizes},
    masq::{Cidr, TcMode},
    mutant::Mutant,
    pins::HeldPins,
    prereq,
    pressure::{self, Pressure},
    programming::{self, Refused},
    quarantine::Quarantine,
    services::{self, DirWatcher, LoadReport},
    sockgc::Gc,
};

/// How often the services directory is polled (inotify does not see changes over 9p).
const POLL: Duration = Duration::from_millis(200);
/// Reconcile at least this often even without a change (repairs edits made behind our back).
const RESYNC: Duration = Duration::from_secs(30);
/// After a failed reconcile, wait this long before retrying an unchanged directory.
const RETRY: Duration = Duration::from_secs(5);

pub struct RunOptions {
    pub cgroup: PathBuf,
    pub services: PathBuf,
    pub bpffs: PathBuf,
    pub mutant: Option<Mutant>,
    pub failpoint: Option<Failpoint>,
    pub sizes: Sizes,
    /// The BPF masquerade and the DP_FORWARD chain (incident B); see netsync.rs.
    pub net: Option<crate::netsync::NetSyncOptions>,
    /// Prefixes whose connections are accelerated (sock_ops + sk_msg, incident C).
    pub accelerate: Vec<Cidr>,
    /// How often stale dp_sockhash keys are garbage-collected (also once before `ready`).
    pub sockhash_gc: Duration,
    /// Features to treat as missing whatever the kernel says (`--assume-missing`).
    pub assume_missing: Vec<Feature>,
    /// Pod networking (`--routing`, pods/); its tc mode is resolved with the masquerade's.
    pub pods: Option<crate::pods::PodsOptions>,
}

pub fn run(mut opts: RunOptions) -> Result<()> {
    if ebpf_object::OBJECT.is_empty() {
        return Err(loader::LoadError::EmptyObject.into());
    }
    prereq::require_root()?;
    prereq::check_cgroup(&opts.cgroup)?;
    if opts.mutant != Some(Mutant::StaleCgroupProg) {
        prereq::check_bpffs(&opts.bpffs)?;
    }
    if !opts.services.is_dir() {
        bail!(
            "services directory {} does not exist or is not a directory",
            opts.services.display()
        );
    }
    if let Some(m) = opts.mutant {
        warn!(mutant = %m, "running a deliberately broken datapath: {}", m.description());
    }

    let report = probe_features(&mut opts)?;
    let hooks: Vec<Hook> = Hook::ALL
        .into_iter()
        .filter(|h| *h != Hook::Getpeername4 || report.uses_getpeername4())
        .collect();

    // A layout change whose entries do not fit is refused before anything is replaced.
    if let Some(m) = opts.net.as_ref().and_then(|n| n.masq.as_ref()) {
        let maps = crate::masq::dir(&opts.bpffs).join("maps");
        crate::masq_migrate::preflight(&maps, m.layout, m.max_entries)
            .context("checking the masquerade maps before the start")?;
    }

    let cgroup = Cgroup::open(&opts.cgroup)?;
    let layout = Layout::new(&opts.bpffs);
    let failpoints = Failpoints::new(opts.failpoint);
    info!(cgroup = %cgroup.path.display(), cgroup_id = cgroup.id, bpffs = %layout.root().display(), "starting");

    // Watch before the first read, so a change made during start-up is not missed.
    let mut watcher = DirWatcher::new(opts.services.clone());
    let started = loader::start(
        ebpf_object::OBJECT,
        &StartOptions {
            layout: &layout,
            cgroup: &cgroup,
            sizes: opts.sizes,
            mutant: opts.mutant,
            failpoints,
            accelerate: &opts.accelerate,
            hooks: &hooks,
            fast_refuse: report.uses_set_retval(),
        },
    )
    .context("starting the datapath")?;
    // For `status`; the mutant that pins nothing records nothing.
    if opts.mutant != Some(Mutant::StaleCgroupProg) {
        if let Err(e) = features::record::write(&opts.bpffs, &report) {
            warn!("cannot record the features report for `status`: {e:#}");
        }
    }
    // Stale sockhash keys a previous run (or anyone) left: collected before `ready`, then
    // on a period. The mutants sockmap-noexist (incident C) and sockmap-no-gc never collect.
    let no_gc = matches!(
        opts.mutant,
        Some(Mutant::SockmapNoexist | Mutant::SockmapNoGc)
    );
    let mut gc = (!no_gc).then(Gc::default);
    if let Some(gc) = gc.as_mut() {
        gc_round(gc, &started.accel.sockhash);
    } else if let Some(m) = opts.mutant {
        warn!("mutant {m}: dp_sockhash is never garbage-collected");
    }
    // Masquerade and DP_FORWARD: attached and reconciled once before `ready`, then kept in
    // sync by their own thread (which ends with the process).
    let _netsync = match opts.net.take() {
        Some(net) => crate::netsync::start(&opts.bpffs, net)?,
        None => None,
    };
    let _pods = match opts.pods.take() {
        Some(mut pods) => {
            pods.mode = report.tc_mode().unwrap_or(TcMode::Clsact);
            Some(crate::pods::start(&opts.bpffs, pods).context("starting pod networking")?)
        }
        None => None,
    };
    // Everything is pinned now: hold it, so pins a bpffs remount takes can be made again
    // (pins.rs). The mutant that pins nothing holds nothing.
    let held = if opts.mutant == Some(Mutant::StaleCgroupProg) {
        None
    } else {
        // Pod links come and go with pods: pods/ holds and pins them again itself.
        let own = [crate::pods::wiring::links_dir(&opts.bpffs)];
        let held = HeldPins::hold_except(&opts.bpffs, &own)
            .with_context(|| format!("holding the pins under {}", opts.bpffs.display()))?;
        info!(objects = held.objects(), "holding every pinned object");
        Some(held)
    };
    if opts.mutant == Some(Mutant::BpffsLostPinsIgnored) {
        warn!("mutant bpffs-lost-pins-ignored: pins that vanish are never made again");
    }
    let repin = held
        .as_ref()
        .filter(|_| opts.mutant != Some(Mutant::BpffsLostPinsIgnored));

    let report = services::load_dir(&opts.services)
        .with_context(|| format!("reading services from {}", opts.services.display()))?;
    log_problems(&report);
    failpoints.hit(Failpoint::BeforeFirstFill);
    let mut tracker = PressureTracker::new(&opts.bpffs);
    let plan = program(&started.maps, &report.state, &opts).context("programming the maps")?;
    tracker.after(&plan.refused);
    info!(
        services = report.state.services.len(),
        writes = plan.service_writes.len(),
        refused = plan.refused.len(),
        "maps programmed"
    );
    failpoints.hit(Failpoint::AfterFirstFill);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut sockhash = gc.map(|gc| (gc, &started.accel.sockhash));
    let mut quarantine =
        (opts.mutant == Some(Mutant::QuarantineNeverRestored)).then(Quarantine::new);
    rt.block_on(watch(
        &opts,
        &started.maps,
        &mut watcher,
        &mut sockhash,
        &mut quarantine,
        repin,
        &mut tracker,
    ))?;
    info!("exiting; pinned links and maps stay in place (`datapathd cleanup` removes them)");
    Ok(())
}

/// Probe the kernel, log the choices, refuse what it cannot run, and resolve
/// `--tc-attach auto`.
fn probe_features(opts: &mut RunOptions) -> Result<Report> {
    let masq = opts.net.as_ref().and_then(|n| n.masq.as_ref());
    let req = Requested {
        tc_attach: masq.map_or(TcMode::Auto, |m| m.mode),
        masquerade: masq.is_some(),
        accelerate: !opts.accelerate.is_empty(),
    };
    let probes = features::probe::probe_all(&opts.assume_missing);
    let report = Report::new(prereq::kernel_release()?, "agent", &probes, req);
    for (name, f) in report.features.iter().filter(|(_, f)| !f.available) {
        warn!(feature = %name, how = %f.how, "kernel feature unavailable");
    }
    for (name, choice) in report.choices.named() {
        info!(choice = name, value = %choice.value, reason = %choice.reason, "feature choice");
    }
    report.require(req)?;
    if let (Some(m), Some(mode)) = (
        opts.net.as_mut().and_then(|n| n.masq.as_mut()),
        report.tc_mode(),
    ) {
        m.mode = mode;
    }
    Ok(report)
}

fn log_problems(report: &LoadReport) {
    for p in &report.problems {
        match p.severity {
            services::Severity::Error => warn!("service file problem: {p}"),
            services::Severity::Note => info!("service file note: {p}"),
        }
    }
}

/// One garbage-collection round; a failure is logged and retried next period.
fn gc_round(gc: &mut Gc, sockhash: &BpfMap) {
    if let Err(e) = gc.round(sockhash) {
        warn!("sockhash garbage collection failed (retried next period): {e:#}");
    }
}

async fn watch(
    opts: &RunOptions,
    maps: &DpMaps,
    watcher: &mut DirWatcher,
    sockhash: &mut Option<(Gc, &BpfMap)>,
    quarantine: &mut Option<Quarantine>,
    repin: Option<&HeldPins>,
    tracker: &mut PressureTracker,
) -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    // Callers wait for this line instead of sleeping.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "datapathd: ready").context("writing to stdout")?;
    stdout.flush().context("writing to stdout")?;

    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sync = Instant::now();
    let mut last_gc = Instant::now();
    // A refused change is retried like a failed reconcile: the map may have room now.
    let mut failed_at: Option<Instant> = tracker.active().then(Instant::now);
    let mut repin_failing = false;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM"); return Ok(()); }
            _ = sigint.recv() => { info!("SIGINT"); return Ok(()); }
            _ = tick.tick() => {}
        }
        if let Some(held) = repin {
            repin_round(held, &mut repin_failing);
        }
        if let Some((gc, map)) = sockhash.as_mut() {
            if last_gc.elapsed() >= opts.sockhash_gc {
                last_gc = Instant::now();
                gc_round(gc, map);
            }
        }
        let changed = match watcher.changed() {
            Ok(c) => c,
            Err(e) => {
                warn!("cannot poll {}: {e}", opts.services.display());
                false
            }
        };
        let retry = failed_at.is_some_and(|t| t.elapsed() >= RETRY);
        // The mutant quarantine-never-restored only; blocking, as a mutant may be.
        let quarantined = match quarantine.as_mut() {
            Some(q) => services::load_dir(&opts.services)
                .map(|r| q.sweep(&r.state))
                .unwrap_or(false),
            None => false,
        };
        if !(changed || retry || quarantined || last_sync.elapsed() >= RESYNC) {
            continue;
        }
        last_sync = Instant::now();
        match reconcile_once(opts, maps, quarantine.as_ref()) {
            Ok(refused) => {
                tracker.after(&refused);
                failed_at = tracker.active().then(Instant::now);
            }
            Err(e) => {
                error!("reconcile failed (the maps keep their previous state): {e:#}");
                failed_at = Some(Instant::now());
            }
        }
    }
}

/// Pins whatever of ours vanished (a bpffs unmounted and mounted again) again. A failure
/// (no bpffs mounted yet) is logged once per streak and retried every tick.
fn repin_round(held: &HeldPins, failing: &mut bool) {
    let missing = held.missing();
    if missing.is_empty() {
        return;
    }
    match held.restore() {
        Ok(restored) => {
            *failing = false;
            warn!(
                restored = restored.len(),
                "pins were gone (bpffs remounted?); pinned the objects held again"
            );
        }
        Err(e) if !*failing => {
            *failing = true;
            warn!(
                missing = missing.len(),
                "pins are gone and cannot be made again yet (retried every {POLL:?}): {e:#}"
            );
        }
        Err(_) => {}
    }
}

fn reconcile_once(
    opts: &RunOptions,
    maps: &DpMaps,
    quarantine: Option<&Quarantine>,
) -> Result<Vec<Refused>> {
    let mut report = services::load_dir(&opts.services)
        .with_context(|| format!("reading services from {}", opts.services.display()))?;
    log_problems(&report);
    if let Some(q) = quarantine {
        report.state = q.apply(report.state);
    }
    let plan = program(maps, &report.state, opts)?;
    if !plan.is_empty() {
        info!(
            services = report.state.services.len(),
            backend_writes = plan.backend_writes.len(),
            slot_writes = plan.slot_writes.len(),
            service_writes = plan.service_writes.len(),
            service_deletes = plan.service_deletes.len(),
            slot_deletes = plan.slot_deletes.len(),
            backend_deletes = plan.backend_deletes.len(),
            "reconciled"
        );
    }
    Ok(plan.refused)
}

/// Read, plan, apply: what fits is applied, what a full map cannot take is refused (in
/// the plan). The mutant map-pressure-flush instead aborts on a refusal and empties
/// dp_services of the services it would keep.
fn program(
    maps: &DpMaps,
    state: &services::DesiredState,
    opts: &RunOptions,
) -> Result<programming::Plan> {
    let current = programming::Current::read(maps)?;
    let wanted = programming::wanted_from(state);
    let plan = programming::plan(&current, &wanted, opts.sizes)?;
    if opts.mutant == Some(Mutant::MapPressureFlush) && !plan.refused.is_empty() {
        let mut flushed = 0;
        for w in wanted
            .iter()
            .filter(|w| current.services.contains_key(&w.key))
        {
            if maps.services.delete(&w.key)? {
                flushed += 1;
            }
        }
        warn!(
            flushed,
            "mutant map-pressure-flush: a change does not fit; emptied dp_services to start over"
        );
        return Ok(programming::Plan {
            refused: plan.refused,
            ..programming::Plan::default()
        });
    }
    programming::apply(maps, &plan)?;
    Ok(plan)
}

/// Says when a full map starts and stops refusing service changes: a log line for each
/// refused change, and the record `status` shows (pressure.rs).
struct PressureTracker {
    bpffs: PathBuf,
    record: Option<Pressure>,
    /// What the last reconcile refused, so an unchanged refusal is not logged every retry.
    last: Vec<String>,
}

impl PressureTracker {
    fn new(bpffs: &std::path::Path) -> Self {
        PressureTracker {
            bpffs: bpffs.to_path_buf(),
            record: pressure::read(bpffs).ok().flatten(),
            last: Vec::new(),
        }
    }

    fn active(&self) -> bool {
        !self.last.is_empty()
    }

    fn after(&mut self, refused: &[Refused]) {
        let lines: Vec<String> = refused.iter().map(ToString::to_string).collect();
        if lines == self.last {
            return;
        }
        let now = pressure::now();
        let record = if refused.is_empty() {
            let Some(open) = self.record.as_ref().filter(|p| p.resolved_at.is_none()) else {
                self.last = lines;
                return;
            };
            info!(
                lasted_s = now.saturating_sub(open.since),
                "map pressure gone: every service change is applied"
            );
            open.resolved(now)
        } else {
            let p = Pressure::refused(self.record.as_ref(), refused, now);
            for f in &p.full {
                warn!(
                    map = %f.map,
                    used = f.used,
                    capacity = f.capacity,
                    "map pressure: {} is full; changes that need room there are refused, \
                     what is programmed keeps being served, retried every {RETRY:?}",
                    f.map
                );
            }
            for r in refused
                .iter()
                .filter(|r| !self.last.contains(&r.to_string()))
            {
                warn!("{r}");
            }
            p
        };
        if let Err(e) = pressure::write(&self.bpffs, &record) {
            warn!("cannot record the map pressure for `status`: {e:#}");
        }
        self.record = Some(record);
        self.last = lines;
    }
}
