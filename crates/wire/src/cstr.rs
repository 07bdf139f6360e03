//! NUL-terminated string helpers shared by the message views.

/// Splits a NUL-terminated string off the front of `buf`, as bytes (query
/// texts and statement names need not be UTF-8 to be compared or forwarded).
/// Returns the string and the rest after the NUL, or `None` when there is no NUL.
pub fn split_cstr_bytes(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// Splits a NUL-terminated UTF-8 string off the front of `buf`.
/// Returns the string and the rest after the NUL, or `None` when there is no
/// NUL or the bytes are not UTF-8.
pub fn split_cstr(buf: &[u8]) -> Option<(&str, &[u8])> {
    let (s, rest) = split_cstr_bytes(buf)?;
    Some((std::str::from_utf8(s).ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_first_nul() {
        assert_eq!(split_cstr(b"ab\0cd\0"), Some(("ab", &b"cd\0"[..])));
        assert_eq!(split_cstr(b"\0"), Some(("", &b""[..])));
        assert_eq!(split_cstr(b"abc"), None);
        assert_eq!(split_cstr(b"\xff\0"), None);
        assert_eq!(
            split_cstr_bytes(b"\xff\0x"),
            Some((&b"\xff"[..], &b"x"[..]))
        );
        assert_eq!(split_cstr_bytes(b"abc"), None);
    }
}
