//! `dp-remote serve`: answer requests on stdin until it closes (see the library docs).

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("serve") => {
            if let Err(e) = dp_remote::server::serve(std::io::stdin().lock(), std::io::stdout()) {
                eprintln!("dp-remote: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!(
                "usage: dp-remote serve\n  answers the harness's requests (JSON header + payloads) on stdin/stdout until stdin closes"
            );
            std::process::exit(2);
        }
    }
}
