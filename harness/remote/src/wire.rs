//! Frames: one JSON header line, then the payloads it announces, back to back.
//!
//! A request's header is a [`Request`] (its payload, if any, is a command's stdin or a
//! file's contents); a response's header is a [`Response`] whose `payloads` lists the
//! byte lengths that follow (stdout and stderr of each command, or a file's contents).

use std::io::{self, BufRead, Read as _, Write};

use serde::{Deserialize, Serialize};

/// Longest header accepted (a guard against reading garbage forever).
const MAX_HEADER: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub op: Op,
    /// Bytes of payload after the header.
    #[serde(default)]
    pub payload: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Op {
    /// Runs `argv` (PATH lookup, no shell) with the payload as stdin; killed (its whole
    /// process group, SIGTERM then SIGKILL 2 s later) after `timeout_ms`.
    Run {
        argv: Vec<String>,
        #[serde(default)]
        env: Vec<(String, String)>,
        timeout_ms: u64,
    },
    /// Runs each argv one after the other, each within `timeout_ms`, stdin empty.
    Batch {
        argvs: Vec<Vec<String>>,
        timeout_ms: u64,
    },
    ReadFile {
        path: String,
    },
    /// Writes the payload to `path` atomically (a temporary file renamed over it),
    /// creating the parent directories.
    WriteFile {
        path: String,
        mode: u32,
    },
    /// Starts a long-running process in its own session, stdout and stderr to files, and
    /// answers with its pid at once; its exit status is kept for [`Op::WaitExit`].
    Spawn {
        argv: Vec<String>,
        #[serde(default)]
        env: Vec<(String, String)>,
        stdout: String,
        stderr: String,
    },
    /// Sends `signal` to `pid` (one process, never a group).
    Kill {
        pid: u32,
        signal: i32,
    },
    /// Waits up to `timeout_ms` for a spawned process to end.
    WaitExit {
        pid: u32,
        timeout_ms: u64,
    },
    /// Waits until `path` holds a line equal to `line` (blanks around it ignored), or
    /// process `pid` ends, or `timeout_ms` passes.
    WaitForLine {
        path: String,
        line: String,
        pid: u32,
        timeout_ms: u64,
    },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ended {
    Code(i32),
    Signal(i32),
    /// Killed by us because it outlived its timeout.
    TimedOut,
    /// It is gone, but not a child of this server (started by an earlier one, whose
    /// record of it was lost).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub reply: Reply,
    /// Lengths of the payloads that follow the header, in order.
    #[serde(default)]
    pub payloads: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reply")]
pub enum Reply {
    /// A [`Op::Run`] or [`Op::Batch`]: one status per command; payloads are each
    /// command's stdout then stderr.
    Ran {
        ended: Vec<Ended>,
        ms: Vec<u64>,
    },
    /// A file's contents (one payload).
    Data,
    Done,
    Spawned {
        pid: u32,
    },
    /// `None`: still running when the wait ended.
    Exit {
        ended: Option<Ended>,
    },
    /// Whether the line appeared (`false`: the process ended without it).
    Line {
        found: bool,
    },
    TimedOut,
    Error {
        message: String,
        not_found: bool,
    },
}

/// Writes one frame.
pub fn write_frame<W: Write, H: Serialize>(
    w: &mut W,
    header: &H,
    payloads: &[&[u8]],
) -> io::Result<()> {
    let mut buf = serde_json::to_vec(header).map_err(io::Error::other)?;
    buf.push(b'\n');
    for p in payloads {
        buf.extend_from_slice(p);
    }
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame's header; `Ok(None)` at a clean end of the stream.
pub fn read_header<R: BufRead, H: for<'de> Deserialize<'de>>(r: &mut R) -> io::Result<Option<H>> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_HEADER as u64)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame header cut short or longer than 1 MiB",
        ));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad frame header: {e}")))
}

/// Reads `len` payload bytes.
pub fn read_payload<R: BufRead>(r: &mut R, len: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0; len];
    r.read_exact(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_binary_payloads() {
        let req = Request {
            id: 7,
            op: Op::WriteFile {
                path: "/x".into(),
                mode: 0o644,
            },
            payload: 4,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req, &[b"a\n\0b"]).unwrap();
        let mut r = io::BufReader::new(&buf[..]);
        let back: Request = read_header(&mut r).unwrap().unwrap();
        assert_eq!(back, req);
        assert_eq!(read_payload(&mut r, back.payload).unwrap(), b"a\n\0b");
        assert!(read_header::<_, Request>(&mut r).unwrap().is_none());
    }

    #[test]
    fn a_cut_header_is_an_error_not_a_hang() {
        let mut r = io::BufReader::new(&b"{\"id\":1"[..]);
        assert!(read_header::<_, Request>(&mut r).is_err());
    }
}
