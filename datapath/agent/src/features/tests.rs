use super::*;

fn all_ok() -> Probes {
    Feature::all()
        .into_iter()
        .map(|f| (f, Probe::ok("probe: test")))
        .collect()
}

fn without(f: Feature, how: &str) -> Probes {
    let mut p = all_ok();
    p.insert(f, Probe::missing(how));
    p
}

const AUTO: Requested = Requested {
    tc_attach: TcMode::Auto,
    masquerade: true,
    accelerate: true,
};

fn report(p: &Probes, req: Requested) -> Report {
    Report::new("test".into(), "probe", p, req)
}

#[test]
fn everything_available_gives_the_full_datapath() {
    let r = report(&all_ok(), AUTO);
    let c = &r.choices;
    assert_eq!(c.socket_lb.value, "on");
    assert_eq!(c.getpeername4.value, "attached");
    assert_eq!(c.fast_refuse.value, "set_retval");
    assert_eq!(c.accelerate.value, "on");
    assert_eq!(c.tc_attach.value, "tcx");
    assert!(r.require(AUTO).is_ok());
    assert_eq!(r.features.len(), Feature::all().len());
}

#[test]
fn no_tcx_degrades_to_clsact_with_the_reason() {
    let p = without(
        Feature::Tcx,
        "probe failed: BPF_LINK_CREATE tcx_ingress on lo: EINVAL",
    );
    let r = report(&p, AUTO);
    assert_eq!(r.choices.tc_attach.value, "clsact");
    assert_eq!(
        r.choices.tc_attach.reason,
        "--tc-attach auto and link:tcx unavailable (probe failed: BPF_LINK_CREATE tcx_ingress on lo: EINVAL)"
    );
    assert_eq!(r.tc_mode(), Some(TcMode::Clsact));
    assert!(r.require(AUTO).is_ok());
}

#[test]
fn explicit_tcx_without_tcx_is_refused() {
    let req = Requested {
        tc_attach: TcMode::Tcx,
        ..AUTO
    };
    let r = report(&without(Feature::Tcx, "probe failed: EINVAL"), req);
    assert_eq!(r.choices.tc_attach.value, "unavailable");
    let err = r.require(req).expect_err("tcx was asked for").to_string();
    assert!(
        err.contains("cannot run the masquerade (--uplink)"),
        "{err}"
    );
    assert!(
        err.contains("--tc-attach tcx asked, but link:tcx is unavailable"),
        "{err}"
    );
    // Without --uplink the same kernel runs (no tc program is loaded).
    assert!(r
        .require(Requested {
            masquerade: false,
            ..req
        })
        .is_ok());
}

#[test]
fn no_set_retval_means_eperm_and_no_getpeername_means_skipped() {
    let mut p = without(
        Feature::Helper(ProgType::CgroupSockAddr, Helper::SetRetval),
        "probe: the verifier refuses a call to bpf_set_retval from cgroup_sock_addr: unknown func bpf_set_retval#187",
    );
    p.insert(
        Feature::Attach(Attach::Getpeername4),
        Probe::missing("probe failed: BPF_PROG_LOAD cgroup_sock_addr (expected_attach_type getpeername4): EINVAL"),
    );
    let r = report(&p, AUTO);
    assert_eq!(r.choices.fast_refuse.value, "eperm");
    assert!(r
        .choices
        .fast_refuse
        .reason
        .contains("unknown func bpf_set_retval#187"));
    assert!(!r.uses_set_retval());
    assert_eq!(r.choices.getpeername4.value, "skipped");
    assert!(!r.uses_getpeername4());
    assert_eq!(r.choices.socket_lb.value, "on");
    assert!(r.require(AUTO).is_ok());
}

#[test]
fn no_cgroup_links_refuses_socket_lb() {
    let r = report(&without(Feature::CgroupLink, "probe failed: EINVAL"), AUTO);
    assert_eq!(r.choices.socket_lb.value, "unavailable");
    let err = r.require(AUTO).expect_err("no links").to_string();
    assert_eq!(
        err,
        "kernel test cannot run socket-LB: missing link:cgroup (probe failed: EINVAL) (see `datapathd features`)"
    );
}

#[test]
fn no_sockhash_refuses_because_acceleration_always_loads() {
    let r = report(
        &without(Feature::MapType(MapKind::Sockhash), "probe failed: EINVAL"),
        Requested {
            accelerate: false,
            ..AUTO
        },
    );
    assert_eq!(r.choices.accelerate.value, "unavailable");
    assert!(r.require(AUTO).is_err());
}

#[test]
fn no_redirect_neigh_refuses_only_the_masquerade() {
    let p = without(
        Feature::Helper(ProgType::SchedCls, Helper::RedirectNeigh),
        "probe: the verifier refuses it",
    );
    let r = report(&p, AUTO);
    assert_eq!(r.choices.tc_attach.value, "unavailable");
    assert!(r.require(AUTO).is_err());
    assert!(r
        .require(Requested {
            masquerade: false,
            ..AUTO
        })
        .is_ok());
}

#[test]
fn names_are_unique_and_parse_back() {
    let all = Feature::all();
    let names: std::collections::BTreeSet<String> = all.iter().map(|f| f.name()).collect();
    assert_eq!(names.len(), all.len());
    for f in &all {
        assert_eq!(parse_feature(&f.name()), Ok(*f));
        assert_ne!(f.first_release(), "?", "{f}");
    }
    let err = parse_feature("tcx").expect_err("not a name");
    assert!(err.contains("valid: prog_type:cgroup_sock_addr"), "{err}");
}

#[test]
fn every_probe_comes_after_what_it_needs() {
    let all = Feature::all();
    for (i, f) in all.iter().enumerate() {
        for n in f.needs() {
            let j = all
                .iter()
                .position(|g| *g == n)
                .expect("a need is a feature");
            assert!(j < i, "{f} is probed before {n}");
        }
    }
}

#[test]
fn report_json_round_trips() {
    let r = report(&all_ok(), AUTO);
    let text = serde_json::to_string(&r).expect("encode");
    let back: Report = serde_json::from_str(&text).expect("decode");
    assert_eq!(back, r);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["features"]["link:tcx"]["first_release"], "6.6");
    assert_eq!(v["choices"]["tc_attach"]["value"], "tcx");
}

#[test]
fn btf_headers() {
    let mut h = [0u8; 24];
    h[0..2].copy_from_slice(&0xeb9fu16.to_le_bytes());
    h[2] = 1;
    h[4..8].copy_from_slice(&24u32.to_le_bytes());
    h[12..16].copy_from_slice(&100u32.to_le_bytes()); // type_len
    h[16..20].copy_from_slice(&100u32.to_le_bytes()); // str_off
    h[20..24].copy_from_slice(&50u32.to_le_bytes()); // str_len
    assert_eq!(probe::check_btf_header(&h, 174), Ok(()));
    assert!(probe::check_btf_header(&h, 100)
        .expect_err("too short")
        .contains("sections end at byte 174"));
    h[0] = 0;
    assert!(probe::check_btf_header(&h, 174).is_err());
}

/// The helper table must list exactly the helpers the embedded objects call, per program
/// type (a new helper in datapath/ebpf without a probe fails here). Calls in shared
/// subprograms (`.text`) must be listed for some program type of their object.
#[test]
fn helper_table_matches_the_objects() {
    use aya_obj::{Object, ProgramSection};
    use std::collections::BTreeSet;
    let is_call = |i: &aya_obj::generated::bpf_insn| i.code == 0x85 && i.src_reg() == 0;
    let mut found = BTreeSet::new();
    for bytes in [
        crate::ebpf_object::OBJECT,
        crate::masq::OBJECT,
        crate::pods::OBJECT,
    ] {
        if bytes.is_empty() {
            eprintln!("SKIPPED helper_table_matches_the_objects: built with AYA_BUILD_SKIP=1");
            return;
        }
        let obj = Object::parse(bytes).expect("parse the embedded object");
        let mut types = BTreeSet::new();
        for prog in obj.programs.values() {
            let p = match &prog.section {
                ProgramSection::CgroupSockAddr { .. } => ProgType::CgroupSockAddr,
                ProgramSection::SockOps => ProgType::SockOps,
                ProgramSection::SkMsg => ProgType::SkMsg,
                ProgramSection::SchedClassifier => ProgType::SchedCls,
                other => panic!("a program section the probes do not know: {other:?}"),
            };
            types.insert(p);
            let func = &obj.functions[&prog.function_key()];
            for insn in func.instructions.iter().filter(|i| is_call(i)) {
                found.insert((p, insn.imm as u32));
            }
        }
        let prog_sections: BTreeSet<usize> =
            obj.programs.values().map(|p| p.section_index).collect();
        for (key, func) in &obj.functions {
            if prog_sections.contains(&key.0) {
                continue;
            }
            for insn in func.instructions.iter().filter(|i| is_call(i)) {
                assert!(
                    HELPERS_USED
                        .iter()
                        .any(|(p, h, _)| types.contains(p) && h.id() == insn.imm as u32),
                    "subprogram {} calls helper #{} that no program type of its object lists",
                    func.name,
                    insn.imm
                );
            }
        }
    }
    let table: BTreeSet<(ProgType, u32)> =
        HELPERS_USED.iter().map(|(p, h, _)| (*p, h.id())).collect();
    assert_eq!(found, table);
}

/// Against this kernel (root only): a helper id no kernel has is refused by name, a real
/// one from the wrong program type too, and a real one is found.
#[test]
fn helper_probe_reads_the_verifier() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "needs root (BPF_PROG_LOAD)"
        );
        eprintln!("SKIPPED helper_probe_reads_the_verifier: needs root");
        return;
    }
    let bogus = probe::helper_by_id(ProgType::SockOps, 10_000, "bogus");
    assert!(!bogus.available, "{bogus:?}");
    assert!(
        bogus.how.contains("invalid func unknown#10000"),
        "{bogus:?}"
    );
    // bpf_msg_redirect_hash exists, but not for sched_cls.
    let wrong = probe::helper_by_id(
        ProgType::SchedCls,
        Helper::MsgRedirectHash.id(),
        "bpf_msg_redirect_hash",
    );
    assert!(!wrong.available, "{wrong:?}");
    let real = probe::helper_by_id(
        ProgType::SkMsg,
        Helper::MsgRedirectHash.id(),
        "bpf_msg_redirect_hash",
    );
    assert!(real.available, "{real:?}");
}
