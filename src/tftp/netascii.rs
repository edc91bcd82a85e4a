//! Netascii on the fly (RFC 1350 + RFC 764): LF → CR LF, CR → CR NUL.
//!
//! Files are stored with Unix line ends; a `netascii` request gets them converted while sending,
//! never passed through unchanged.

use std::io::{self, BufRead, Read};

/// Wraps a buffered reader and converts its bytes to netascii.
#[derive(Debug)]
pub struct NetasciiReader<R> {
    inner: R,
    /// Second byte of a pair that did not fit the caller's buffer.
    pending: Option<u8>,
}

impl<R: BufRead> NetasciiReader<R> {
    /// Converts what `inner` yields.
    pub fn new(inner: R) -> NetasciiReader<R> {
        NetasciiReader { inner, pending: None }
    }
}

impl<R: BufRead> Read for NetasciiReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        if let Some(p) = self.pending {
            if out.is_empty() {
                return Ok(0);
            }
            out[0] = p;
            n = 1;
            self.pending = None;
        }
        while n < out.len() {
            let src = self.inner.fill_buf()?;
            if src.is_empty() {
                break;
            }
            let mut used = 0;
            for &b in src {
                if n == out.len() {
                    break;
                }
                used += 1;
                let second = match b {
                    b'\n' => Some(b'\n'),
                    b'\r' => Some(0),
                    _ => None,
                };
                match second {
                    None => {
                        out[n] = b;
                        n += 1;
                    }
                    Some(s) => {
                        out[n] = b'\r';
                        n += 1;
                        if n < out.len() {
                            out[n] = s;
                            n += 1;
                        } else {
                            self.pending = Some(s);
                            break;
                        }
                    }
                }
            }
            self.inner.consume(used);
            if self.pending.is_some() {
                break;
            }
        }
        Ok(n)
    }
}

/// The size of `src` after conversion (each CR and LF gains one byte).
pub fn converted_size(mut src: impl Read) -> io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let k = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += k as u64 + buf[..k].iter().filter(|&&b| b == b'\n' || b == b'\r').count() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor};

    fn convert_with_chunks(input: &[u8], chunk: usize, inner_cap: usize) -> Vec<u8> {
        let mut r = NetasciiReader::new(BufReader::with_capacity(inner_cap, Cursor::new(input.to_vec())));
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let k = r.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            out.extend_from_slice(&buf[..k]);
        }
        out
    }

    #[test]
    fn converts_line_ends() {
        let input = b"a\nb\rc\r\nd\n\n";
        let want = b"a\r\nb\r\0c\r\0\r\nd\r\n\r\n".to_vec();
        for chunk in 1..8 {
            for cap in 1..5 {
                assert_eq!(convert_with_chunks(input, chunk, cap), want, "chunk {chunk} cap {cap}");
            }
        }
        assert_eq!(converted_size(Cursor::new(input)).unwrap(), want.len() as u64);
    }

    #[test]
    fn plain_text_unchanged() {
        assert_eq!(convert_with_chunks(b"hello", 512, 8192), b"hello");
        assert_eq!(convert_with_chunks(b"", 512, 8192), b"");
    }
}
