//! Text data segments: the `key=value` pairs of Login and Text PDUs (RFC 7143 §6.1).
//!
//! Each pair is `key=value` followed by a NUL. Keys are at most 63 bytes, values at most
//! 255 (RFC 7143 §6.1); the text is UTF-8. Parsing borrows from the PDU; writing fills a
//! caller's buffer. Neither allocates.

use super::WireError;

/// The longest key (RFC 7143 §6.1).
pub const KEY_MAX: usize = 63;
/// The longest value (RFC 7143 §6.1).
pub const VALUE_MAX: usize = 255;

/// The pairs of a text data segment, in order.
#[derive(Clone, Debug)]
pub struct TextPairs<'a> {
    rest: &'a [u8],
}

impl<'a> TextPairs<'a> {
    /// The pairs in `data`. A final pair without its NUL is accepted, as Linux's
    /// targets and initiators accept it.
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }
}

impl<'a> Iterator for TextPairs<'a> {
    type Item = Result<(&'a str, &'a str), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Padding NULs between or after pairs carry nothing.
        while let [0, rest @ ..] = self.rest {
            self.rest = rest;
        }
        if self.rest.is_empty() {
            return None;
        }
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.rest.len());
        let (pair, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(split_pair(pair))
    }
}

fn split_pair(pair: &[u8]) -> Result<(&str, &str), WireError> {
    let text = core::str::from_utf8(pair).map_err(|_| WireError::BadText)?;
    let (key, value) = text.split_once('=').ok_or(WireError::BadText)?;
    if key.is_empty() || key.len() > KEY_MAX || value.len() > VALUE_MAX {
        return Err(WireError::BadText);
    }
    Ok((key, value))
}

/// Writes `key=value` pairs into a buffer.
pub struct TextWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> TextWriter<'b> {
    /// A writer that fills `buf` from its start.
    pub fn new(buf: &'b mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// Appends `key=value`.
    pub fn push(&mut self, key: &str, value: &str) -> Result<(), WireError> {
        if key.is_empty()
            || key.len() > KEY_MAX
            || value.len() > VALUE_MAX
            || key.contains(['=', '\0'])
            || value.contains('\0')
        {
            return Err(WireError::BadText);
        }
        let needed = key.len() + 1 + value.len() + 1;
        let out = self
            .buf
            .get_mut(self.len..self.len + needed)
            .ok_or(WireError::BufferTooSmall)?;
        let (k, rest) = out.split_at_mut(key.len());
        k.copy_from_slice(key.as_bytes());
        let (eq, rest) = rest.split_at_mut(1);
        eq[0] = b'=';
        let (v, nul) = rest.split_at_mut(value.len());
        v.copy_from_slice(value.as_bytes());
        nul[0] = 0;
        self.len += needed;
        Ok(())
    }

    /// Appends `key=<number>`.
    pub fn push_number(&mut self, key: &str, value: u32) -> Result<(), WireError> {
        let mut digits = [0u8; 10];
        let mut n = value;
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // Only ASCII digits were written.
        let text = core::str::from_utf8(&digits[start..]).map_err(|_| WireError::BadText)?;
        self.push(key, text)
    }

    /// The bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The text written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Parses a decimal number value (`Numerical` in RFC 7143 §5.1; no hex or base64 forms).
pub fn parse_number(value: &str) -> Result<u32, WireError> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WireError::BadText);
    }
    value.parse().map_err(|_| WireError::BadText)
}
