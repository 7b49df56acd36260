//! A minimal writer of the cpio "newc" format, for the per-VM initrd that carries the
//! node's config, the run's authorized key and the node's SSH host key.

/// An archive in memory. Entries are written in the order they are added.
#[derive(Default)]
pub struct Newc {
    buf: Vec<u8>,
    ino: u32,
}

impl Newc {
    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.entry(name, 0o040000 | (mode & 0o7777), 2, &[])
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(name, 0o100000 | (mode & 0o7777), 1, data)
    }

    /// Ends the archive with the trailer and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, &[]);
        self.buf
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> &mut Self {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so that the same inputs give the same bytes
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0,
            0,
            0,
            0,
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Newc;

    #[test]
    fn entries_are_aligned_and_trailed() {
        let mut a = Newc::default();
        a.dir("dp", 0o755).file("dp/config", 0o644, b"X=1\n");
        let bytes = a.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("dp/config\0"));
        assert!(text.contains("X=1\n"));
        assert!(text.contains("TRAILER!!!\0"));
    }
}
