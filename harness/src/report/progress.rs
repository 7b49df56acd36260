//! Progress: an indicatif spinner on a terminal (which step, which fault, which check),
//! plain log lines otherwise (CI). Every line also goes to the run's harness.log.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    log: Option<Arc<Mutex<std::fs::File>>>,
}

impl Progress {
    pub fn new(log: Option<&Path>) -> Progress {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bar = tty.then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(std::time::Duration::from_secs(1));
            b
        });
        let log = log
            .and_then(|p| std::fs::File::create(p).ok())
            .map(|f| Arc::new(Mutex::new(f)));
        Progress { bar, log }
    }

    pub fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => {
                b.println(s);
                if !s.starts_with(' ') {
                    b.set_message(s.to_string());
                }
            }
            None => eprintln!("harness: {s}"),
        }
        if let Some(l) = &self.log {
            if let Ok(mut f) = l.lock() {
                let _ = writeln!(f, "{s}");
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
