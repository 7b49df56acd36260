//! `dp-probe serve`: bind everything, say `ready`, answer forever.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::cli::ServeArgs;
use crate::wire::{strip_line_end, Answer, MAX_LINE};
use crate::{place, sock, EXIT_OK, EXIT_SETUP};

pub fn run(args: &ServeArgs) -> u8 {
    if let Some(cgroup) = &args.cgroup {
        if let Err(e) = place::join_cgroup(cgroup) {
            eprintln!("{}", e.report());
            return EXIT_SETUP;
        }
    }
    if let Some(netns) = &args.netns {
        if let Err(e) = place::enter_netns(netns) {
            eprintln!("{}", e.report());
            return EXIT_SETUP;
        }
    }
    let mut listeners = Vec::new();
    for addr in &args.tcp {
        match sock::tcp_listener(*addr) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("dp-probe: cannot listen on tcp {addr}: {e}");
                return EXIT_SETUP;
            }
        }
    }
    let mut udp = Vec::new();
    for addr in &args.udp {
        match sock::udp_socket(*addr) {
            Ok(s) => udp.push(s),
            Err(e) => {
                eprintln!("dp-probe: cannot bind udp {addr}: {e}");
                return EXIT_SETUP;
            }
        }
    }
    // Callers wait for this line instead of sleeping; it must not sit in a buffer.
    let mut out = io::stdout().lock();
    if writeln!(out, "ready").and_then(|()| out.flush()).is_err() {
        // Nobody reads our stdout any more; serving still makes sense.
    }
    drop(out);

    let id: Arc<str> = Arc::from(args.id.as_str());
    let mut threads = Vec::new();
    for listener in listeners {
        let id = Arc::clone(&id);
        threads.push(thread::spawn(move || accept_loop(&listener, &id)));
    }
    for socket in udp {
        let id = Arc::clone(&id);
        threads.push(thread::spawn(move || udp_loop(&socket, &id)));
    }
    for t in threads {
        // A panicking serving thread is a bug; keep serving the others.
        let _ = t.join();
    }
    EXIT_OK
}

fn accept_loop(listener: &TcpListener, id: &Arc<str>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let id = Arc::clone(id);
                thread::spawn(move || {
                    // The client may vanish at any time; that ends only this connection.
                    let _ = serve_tcp(stream, &id);
                });
            }
            Err(e) => {
                // EMFILE and friends: say so once per failure and back off briefly.
                eprintln!("dp-probe: accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn serve_tcp(stream: TcpStream, id: &str) -> io::Result<()> {
    let local = stream.local_addr()?;
    let peer = stream.peer_addr()?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE as u64).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && n >= MAX_LINE {
            // An endless line: stop reading rather than buffer it.
            return Ok(());
        }
        let answer = answer(id, local, peer, strip_line_end(&line));
        writer.write_all(answer.as_bytes())?;
    }
}

fn udp_loop(socket: &UdpSocket, id: &str) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let mut buf = vec![0u8; MAX_LINE];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let request = String::from_utf8_lossy(&buf[..n]);
                let answer = answer(id, local, peer, strip_line_end(&request));
                if let Err(e) = socket.send_to(answer.as_bytes(), peer) {
                    eprintln!("dp-probe: udp reply to {peer} failed: {e}");
                }
            }
            Err(e) => {
                eprintln!("dp-probe: udp receive failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One JSON line, newline included.
fn answer(id: &str, local: SocketAddr, peer: SocketAddr, echo: &str) -> String {
    let a = Answer {
        backend: id.to_owned(),
        local: local.to_string(),
        peer: peer.to_string(),
        echo: echo.to_owned(),
    };
    // Serializing a struct of strings cannot fail.
    let mut s = serde_json::to_string(&a).unwrap_or_default();
    s.push('\n');
    s
}
