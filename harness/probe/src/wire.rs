//! The JSON lines dp-probe speaks (their types are dp-wire's) and how it reads a line.

/// Declared once, in dp-wire, for dp-probe, the harness and the datapath's tests.
pub use dp_wire::{
    Answer, Attempt, ConnReport, HoldEvent, MapCleared, MapFilled, ReqRespSummary, SockhashFilled,
};

/// The longest request or answer either side reads, in bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// Strips one trailing `\n` (and a `\r` before it).
pub fn strip_line_end(s: &str) -> &str {
    let s = s.strip_suffix('\n').unwrap_or(s);
    s.strip_suffix('\r').unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends() {
        assert_eq!(strip_line_end("a\r\n"), "a");
        assert_eq!(strip_line_end("a\n"), "a");
        assert_eq!(strip_line_end("a"), "a");
        assert_eq!(strip_line_end("a\n\n"), "a\n");
    }
}
