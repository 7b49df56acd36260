//! The command line (clap derive). Parsing is separate from running so tests can check it.

use std::net::SocketAddrV4;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "dp-probe",
    version,
    about = "Makes real TCP/UDP traffic for datapath tests",
    after_help = "Exit status: 0 every attempt ok, 1 an attempt failed, 2 bad arguments, \
                  3 could not join the cgroup, enter the netns or bind."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Bind every socket, print `ready`, then answer requests forever.
    Serve(ServeArgs),
    /// Connect (TCP) or send (UDP) to an address; one JSON object per attempt.
    Connect(ConnectArgs),
    /// Sequential connect+request+response+close; latency percentiles as JSON.
    Bench(BenchArgs),
    /// One TCP connection kept open: a request and its answer every interval, one JSON
    /// line per event (opened, answered, ended); exits when the connection ends.
    Hold(HoldArgs),
    /// Plant stale keys in a pinned sockhash (each value: an established decoy socket of
    /// its own), print `planted {json}`, and keep the decoys open until killed.
    PlantSockhash(PlantArgs),
    /// Many short connections (connect, one request, its answer, close); a JSON summary.
    Churn(ChurnArgs),
    /// Persistent connections, many requests each with a unique token; hung requests
    /// (read timeout) and cross-delivered answers are counted; a JSON summary.
    Reqresp(ReqRespArgs),
    /// Fill a pinned service map of the datapath with foreign entries (keys from `--first`
    /// on) until the kernel refuses one; a JSON summary.
    FillMap(FillMapArgs),
    /// Delete the foreign entries `fill-map` wrote (keys `--first` .. `--first + --count`),
    /// nothing else; a JSON summary.
    ClearMap(ClearMapArgs),
    /// Fill a pinned sockhash with the keys of established loopback sockets of our own
    /// (each keyed by its own tuple) until the kernel refuses one more; print a JSON
    /// summary and, once the map is full, `holding`; keep the sockets open until stopped
    /// (SIGTERM): their entries go with them.
    FillSockhash(FillSockhashArgs),
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct FillSockhashArgs {
    /// The pinned sockhash (e.g. /sys/fs/bpf/datapathd/maps/dp_sockhash).
    #[arg(long, value_name = "PATH")]
    pub map: PathBuf,
    /// Give up after this many inserts (the map's max_entries and one).
    #[arg(long)]
    pub limit: u32,
}

/// Which of the datapath's maps, so the foreign keys and values have its layout.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    /// dp_services: 198.18.0.0 + i : PORT / tcp -> {0 backends, service id FIRST + i}.
    Services,
    /// dp_slots: {service id FIRST, slot i} -> backend id FIRST.
    Slots,
    /// dp_backends: FIRST + i -> 198.18.0.1 : PORT / tcp.
    Backends,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct FillMapArgs {
    /// The pinned map (e.g. /sys/fs/bpf/datapathd/maps/dp_slots).
    #[arg(long, value_name = "PATH")]
    pub map: PathBuf,
    #[arg(long, value_enum)]
    pub kind: MapKind,
    /// The first foreign id (service and backend ids; far above the agent's, which count
    /// from 1).
    #[arg(long)]
    pub first: u32,
    /// The foreign services' and backends' port.
    #[arg(long)]
    pub port: u16,
    /// Give up after this many inserts (the map's max_entries and one).
    #[arg(long)]
    pub limit: u32,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ClearMapArgs {
    #[arg(long, value_name = "PATH")]
    pub map: PathBuf,
    #[arg(long, value_enum)]
    pub kind: MapKind,
    #[arg(long)]
    pub first: u32,
    #[arg(long)]
    pub port: u16,
    /// How many keys from the first.
    #[arg(long)]
    pub count: u32,
}

/// Whose view of the connection a planted key takes.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFor {
    /// The key the server's socket will compute: server address first.
    Server,
    /// The key the client's socket will compute: client address first.
    Client,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct PlantArgs {
    /// The pinned sockhash (e.g. /sys/fs/bpf/datapathd/maps/dp_sockhash).
    #[arg(long, value_name = "PATH")]
    pub map: PathBuf,
    #[arg(long, value_enum)]
    pub key_for: KeyFor,
    /// The server end of the future connection.
    #[arg(long, value_name = "ADDR:PORT")]
    pub server: SocketAddrV4,
    /// The client end of a future connection (repeatable: one key each).
    #[arg(long, value_name = "ADDR:PORT", required = true)]
    pub client: Vec<SocketAddrV4>,
    /// Address of the decoy connection (a listener and a client of our own on it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub decoy_ip: std::net::Ipv4Addr,
    #[command(flatten)]
    pub place: Placement,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ChurnArgs {
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: SocketAddrV4,
    /// How many connections, one after the other.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Bind each connection to the next port of this range (cycling), so that
    /// connections reuse known tuples.
    #[arg(long, value_name = "MIN-MAX", value_parser = parse_port_range)]
    pub ports: Option<(u16, u16)>,
    /// The source address used with --ports.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub bind_ip: std::net::Ipv4Addr,
    /// Deadline for the connect, and for the answer (a read timeout), in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub place: Placement,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ReqRespArgs {
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: SocketAddrV4,
    /// Requests per connection.
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub requests: u32,
    /// Persistent connections, used in turn.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Bind connection i to ADDR:(PORT+i); with PORT 0, every connection to ADDR and an
    /// ephemeral port (a source address of one's choosing).
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<SocketAddrV4>,
    /// Read timeout for each answer (a hung request), in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub timeout_ms: u64,
    /// Pause between rounds of requests, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub interval_ms: u64,
    #[command(flatten)]
    pub place: Placement,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("expected MIN-MAX, got {s:?}"))?;
    let lo: u16 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let hi: u16 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{s:?}: need 1 <= MIN <= MAX"));
    }
    Ok((lo, hi))
}

/// Where the probe runs: a cgroup to join (first) and a network namespace to enter.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Join this cgroup v2 directory first (writes our pid to PATH/cgroup.procs).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Then enter this network namespace (setns on the file; nothing is remounted).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    /// The name this backend reports in every answer.
    #[arg(long, value_name = "NAME")]
    pub id: String,
    /// A TCP address to listen on (repeatable).
    #[arg(long, value_name = "ADDR:PORT", required_unless_present = "udp")]
    pub tcp: Vec<SocketAddrV4>,
    /// A UDP address to answer on (repeatable).
    #[arg(long, value_name = "ADDR:PORT")]
    pub udp: Vec<SocketAddrV4>,
    /// Enter this network namespace before binding.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Join this cgroup v2 directory first (e.g. the node's, so that sock_ops sees the
    /// server's sockets).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ConnectArgs {
    /// The address to reach (a service address or a backend).
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: SocketAddrV4,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    pub proto: Proto,
    /// The request; sent as one line (TCP) or one datagram (UDP).
    #[arg(long, value_name = "TEXT", default_value = "ping", value_parser = parse_payload)]
    pub payload: String,
    /// Deadline for one whole attempt (connect, send and the answer), in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub timeout_ms: u64,
    /// Bind the client socket to this address first (SO_REUSEADDR).
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<SocketAddrV4>,
    /// How many attempts, each on a new socket.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    #[command(flatten)]
    pub place: Placement,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct BenchArgs {
    /// The address to reach (TCP).
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: SocketAddrV4,
    /// How many sequential connections.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    #[arg(long, value_name = "TEXT", default_value = "ping", value_parser = parse_payload)]
    pub payload: String,
    /// Deadline for each connection, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub place: Placement,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct HoldArgs {
    /// The address to reach (a service address or a backend), TCP.
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: SocketAddrV4,
    /// Pause between an answer and the next request, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub interval_ms: u64,
    /// Deadline for the connect, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub connect_timeout_ms: u64,
    /// How long one answer may take before the connection counts as ended, in
    /// milliseconds. Long on purpose: TCP retransmits through a cut or a slow link, and
    /// a stall is the judge's to measure, not a reason to give up.
    #[arg(long, value_name = "N", default_value_t = 120_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub give_up_ms: u64,
    #[command(flatten)]
    pub place: Placement,
}

/// A request must fit on one line: the TCP protocol is line based.
fn parse_payload(s: &str) -> Result<String, String> {
    if s.contains(['\n', '\r']) {
        Err("the payload must be a single line (no \\n or \\r)".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dp-probe").chain(args.iter().copied()))
    }

    #[test]
    fn connect_defaults() {
        let cli = parse(&["connect", "--to", "127.0.0.9:80"]).expect("valid arguments");
        let Command::Connect(args) = cli.command else {
            panic!("expected connect, got {:?}", cli.command)
        };
        assert_eq!(args.to, "127.0.0.9:80".parse().expect("address"));
        assert_eq!(args.proto, Proto::Tcp);
        assert_eq!(args.payload, "ping");
        assert_eq!(args.timeout_ms, 2000);
        assert_eq!(args.count, 1);
        assert_eq!(args.bind, None);
        assert_eq!(args.place, Placement::default());
    }

    #[test]
    fn connect_everything() {
        let cli = parse(&[
            "connect",
            "--to",
            "127.0.0.9:53",
            "--proto",
            "udp",
            "--payload",
            "hi there",
            "--timeout-ms",
            "150",
            "--netns",
            "/run/netns/x",
            "--cgroup",
            "/sys/fs/cgroup/t",
            "--bind",
            "127.0.0.2:4000",
            "--count",
            "7",
        ])
        .expect("valid arguments");
        let Command::Connect(args) = cli.command else {
            panic!("expected connect, got {:?}", cli.command)
        };
        assert_eq!(args.proto, Proto::Udp);
        assert_eq!(args.payload, "hi there");
        assert_eq!(args.timeout_ms, 150);
        assert_eq!(args.count, 7);
        assert_eq!(args.bind, Some("127.0.0.2:4000".parse().expect("address")));
        assert_eq!(args.place.netns, Some(PathBuf::from("/run/netns/x")));
        assert_eq!(args.place.cgroup, Some(PathBuf::from("/sys/fs/cgroup/t")));
    }

    #[test]
    fn serve_repeated_addresses() {
        let cli = parse(&[
            "serve",
            "--id",
            "b1",
            "--tcp",
            "127.0.0.5:80",
            "--tcp",
            "127.0.0.5:81",
            "--udp",
            "127.0.0.5:53",
        ])
        .expect("valid arguments");
        let Command::Serve(args) = cli.command else {
            panic!("expected serve, got {:?}", cli.command)
        };
        assert_eq!(args.id, "b1");
        assert_eq!(args.tcp.len(), 2);
        assert_eq!(args.udp.len(), 1);
        assert_eq!(args.netns, None);
        assert_eq!(args.cgroup, None);
    }

    #[test]
    fn sockmap_commands() {
        let cli = parse(&[
            "plant-sockhash",
            "--map",
            "/sys/fs/bpf/x/maps/dp_sockhash",
            "--key-for",
            "server",
            "--server",
            "127.0.0.2:8080",
            "--client",
            "127.0.0.1:40000",
            "--client",
            "127.0.0.1:40001",
        ])
        .expect("valid arguments");
        let Command::PlantSockhash(a) = cli.command else {
            panic!("expected plant-sockhash")
        };
        assert_eq!((a.key_for, a.client.len()), (KeyFor::Server, 2));
        let cli = parse(&[
            "churn",
            "--to",
            "127.0.0.2:80",
            "--count",
            "5",
            "--ports",
            "40000-40009",
        ])
        .expect("valid arguments");
        let Command::Churn(a) = cli.command else {
            panic!("expected churn")
        };
        assert_eq!(a.ports, Some((40000, 40009)));
        for bad in [
            &[
                "churn",
                "--to",
                "127.0.0.2:80",
                "--count",
                "5",
                "--ports",
                "9-1",
            ][..],
            &[
                "plant-sockhash",
                "--map",
                "/x",
                "--key-for",
                "server",
                "--server",
                "127.0.0.1:1",
            ],
            &["reqresp", "--to", "127.0.0.2:80", "--connections", "0"],
        ] {
            let err = parse(bad).expect_err("must be rejected");
            assert_eq!(
                err.exit_code(),
                i32::from(crate::EXIT_USAGE),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let cases: &[&[&str]] = &[
            &["connect"],
            &["connect", "--to", "localhost:80"],
            &["connect", "--to", "[::1]:80"],
            &["connect", "--to", "127.0.0.1:80", "--proto", "sctp"],
            &["connect", "--to", "127.0.0.1:80", "--count", "0"],
            &["connect", "--to", "127.0.0.1:80", "--timeout-ms", "0"],
            &["connect", "--to", "127.0.0.1:80", "--payload", "a\nb"],
            &["serve", "--id", "b1"],
            &["serve", "--tcp", "127.0.0.1:80"],
            &["bench", "--to", "127.0.0.1:80"],
            &["frobnicate"],
        ];
        for case in cases {
            let err = parse(case).expect_err(&format!("{case:?} should be rejected"));
            assert_ne!(err.kind(), ErrorKind::DisplayHelp, "{case:?}");
            assert_eq!(
                err.exit_code(),
                i32::from(crate::EXIT_USAGE),
                "{case:?}: {err}"
            );
        }
    }

    #[test]
    fn hold_defaults_and_bounds() {
        let cli = parse(&["hold", "--to", "10.96.0.10:80", "--netns", "/run/netns/p"])
            .expect("valid arguments");
        let Command::Hold(a) = cli.command else {
            panic!("expected hold, got {:?}", cli.command)
        };
        assert_eq!((a.interval_ms, a.give_up_ms), (200, 120_000));
        assert_eq!(a.place.netns, Some(PathBuf::from("/run/netns/p")));
        let err = parse(&["hold", "--to", "10.96.0.10:80", "--interval-ms", "0"])
            .expect_err("a zero interval is a busy loop");
        assert_eq!(err.exit_code(), i32::from(crate::EXIT_USAGE));
    }

    #[test]
    fn serve_udp_only_is_enough() {
        parse(&["serve", "--id", "u", "--udp", "127.0.0.1:5353"]).expect("udp alone is valid");
    }
}
