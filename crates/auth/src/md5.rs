//! PostgreSQL's md5 password scheme and pgbouncer's `auth_file`.
//!
//! PostgreSQL stores `"md5" + hex(md5(password || user))`. In an md5 login
//! the server sends a 4-byte salt and the client answers
//! `"md5" + hex(md5(hex(md5(password || user)) || salt))`, so the stored
//! secret alone is enough to check a client *and* to log in to a server that
//! uses md5 — which is how pgbouncer uses userlist.txt, and pgherd too.
//! (md5 is weak; PostgreSQL deprecates it. pgherd supports it because
//! existing clusters and userlists use it.)

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// `"md5" + hex(md5(password || user))`, as `pg_authid` stores it.
pub fn md5_secret(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// Whether `s` looks like a stored md5 secret.
pub fn is_md5_secret(s: &str) -> bool {
    s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The answer to an md5 challenge with `salt`, from the stored secret.
pub fn md5_salted(secret: &str, salt: [u8; 4]) -> String {
    let inner = secret.strip_prefix("md5").unwrap_or(secret);
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// Whether `password` is the one behind `secret`, in constant time.
pub fn md5_password_matches(secret: &str, user: &str, password: &str) -> bool {
    md5_secret(user, password)
        .as_bytes()
        .ct_eq(secret.as_bytes())
        .into()
}

/// Checks a client's md5 answer in constant time.
pub fn md5_answer_matches(secret: &str, salt: [u8; 4], answer: &[u8]) -> bool {
    md5_salted(secret, salt).as_bytes().ct_eq(answer).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One `"user" "secret"` line of a pgbouncer auth_file.
#[derive(PartialEq, Eq)]
pub struct UserlistEntry {
    pub user: String,
    pub secret: String,
}

impl std::fmt::Debug for UserlistEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserlistEntry({:?}, ***)", self.user)
    }
}

/// Parses pgbouncer's auth_file (userlist.txt): one `"user" "secret"` pair
/// per line, `""` for a quote inside, blank lines and lines starting with
/// `;` or `#` ignored. The secret is plaintext, an md5 secret or a SCRAM
/// verifier. Errors name the line (never its secret).
pub fn parse_userlist(text: &str) -> Result<Vec<UserlistEntry>, String> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: expected \"user\" \"password\"", n + 1);
        let (user, rest) = quoted(line).ok_or_else(bad)?;
        let (secret, rest) = quoted(rest.trim_start()).ok_or_else(bad)?;
        if !rest.trim().is_empty() && !rest.trim_start().starts_with('"') {
            return Err(bad());
        }
        entries.push(UserlistEntry { user, secret });
    }
    Ok(entries)
}

/// A `"..."` string at the start of `s` (with `""` as a quote), and the rest.
fn quoted(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if let Some((_, '"')) = chars.peek() {
                chars.next();
                out.push('"');
                continue;
            }
            return Some((out, &body[i + 1..]));
        }
        out.push(c);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_answers_match_postgres() {
        // SELECT 'md5' || md5('secret' || 'alice')
        assert_eq!(
            md5_secret("alice", "secret"),
            "md5".to_owned() + &hex(&Md5::digest(b"secretalice"))
        );
        let secret = md5_secret("alice", "secret");
        assert!(is_md5_secret(&secret));
        assert!(!is_md5_secret("md5nothex"));
        let salt = [1, 2, 3, 4];
        // What postgres-protocol's client computes from the password.
        let client = postgres_protocol::authentication::md5_hash(b"alice", b"secret", salt);
        assert_eq!(md5_salted(&secret, salt), client);
        assert!(md5_answer_matches(&secret, salt, client.as_bytes()));
        assert!(!md5_answer_matches(
            &secret,
            [9, 9, 9, 9],
            client.as_bytes()
        ));
        assert!(md5_password_matches(&secret, "alice", "secret"));
        assert!(!md5_password_matches(&secret, "alice", "Secret"));
    }

    #[test]
    fn userlists_parse_like_pgbouncer() {
        let text =
            "; comment\n\n\"alice\" \"md5aaaa\"\n\"bo\"\"b\"  \"pa ss\" \"ignored\"\n# more\n";
        let e = parse_userlist(text).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].user.as_str(), e[0].secret.as_str()),
            ("alice", "md5aaaa")
        );
        assert_eq!(
            (e[1].user.as_str(), e[1].secret.as_str()),
            ("bo\"b", "pa ss")
        );
        let err = parse_userlist("\"alice\" secret-without-quotes\n").unwrap_err();
        assert_eq!(err, "line 1: expected \"user\" \"password\"");
        assert!(!format!("{:?}", e[1]).contains("pa ss"));
    }
}
