//! HTTP basic auth for the admin port, like haproxy's `stats auth`.
//!
//! Users are pgherd's own: a member of `admin_users` may use the control
//! endpoints, a member of `admin_users` or `stats_users` may read the
//! client and server lists and the settings (`admin_auth = "private"`, the
//! default) or everything (`"all"`). The password is checked against the user's secret
//! (SCRAM verifier or md5, from `[users]` or the auth_file: the one the
//! console and clients log in with), so no separate password file exists. Health checks are always open.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use pgherd_config::{AdminAuth, Config};

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Health checks: nothing, ever.
    Nothing,
    /// Pages, metrics, JSON.
    Read,
    /// Reads that say who connects and how pgherd is set up (client and
    /// server lists, the settings).
    PrivateRead,
    /// `POST` endpoints.
    Control,
}

/// The outcome of checking a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    /// No or wrong credentials: 401 with a challenge.
    Unauthenticated,
    /// A valid user who may not do this: 403.
    Forbidden,
}

/// Checks the `Authorization` header value (if any) against what is needed.
pub(crate) fn check(config: &Config, need: Need, authorization: Option<&str>) -> Verdict {
    let general = &config.general;
    let required = match need {
        Need::Nothing => false,
        Need::Read => general.admin_auth == AdminAuth::All,
        Need::PrivateRead => general.admin_auth != AdminAuth::Control,
        Need::Control => true,
    };
    if !required {
        return Verdict::Allowed;
    }
    let Some((user, password)) = authorization.and_then(basic_credentials) else {
        return Verdict::Unauthenticated;
    };
    let known = config
        .users
        .get(&user)
        .is_some_and(|u| match (&u.verifier, &u.md5) {
            (Some(v), _) => v.verify_password(&password),
            (None, Some(m)) => pgherd_auth::md5::md5_password_matches(m.expose(), &user, &password),
            (None, None) => false,
        });
    if !known {
        return Verdict::Unauthenticated;
    }
    let admin = general.admin_users.contains(&user);
    let stats = general.stats_users.contains(&user);
    match need {
        Need::Control if admin => Verdict::Allowed,
        Need::Read | Need::PrivateRead if admin || stats => Verdict::Allowed,
        _ => Verdict::Forbidden,
    }
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(B64.decode(value.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Plaintext passwords in [users] become SCRAM verifiers at load: the
    // check runs against those, as for verifiers copied from pg_authid.
    fn config(admin_auth: &str) -> Config {
        Config::parse(&format!(
            "[pgherd]\nprobe_user = \"p\"\nadmin_users = [\"boss\"]\nstats_users = [\"viewer\"]\n\
             admin_auth = \"{admin_auth}\"\n[[nodes]]\nname = \"a\"\nhost = \"h\"\n\
             [users]\nboss = {{ password = \"boss-pw\" }}\nviewer = {{ password = \"viewer-pw\" }}\n\
             app = {{ password = \"app-pw\" }}\n"
        ))
        .unwrap()
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", B64.encode(format!("{user}:{password}")))
    }

    #[test]
    fn control_needs_an_admin_user_with_the_right_password() {
        let c = config("control");
        assert_eq!(check(&c, Need::Control, None), Verdict::Unauthenticated);
        assert_eq!(
            check(&c, Need::Control, Some(&basic("boss", "boss-pw"))),
            Verdict::Allowed
        );
        assert_eq!(
            check(&c, Need::Control, Some(&basic("boss", "wrong"))),
            Verdict::Unauthenticated
        );
        assert_eq!(
            check(&c, Need::Control, Some(&basic("viewer", "viewer-pw"))),
            Verdict::Forbidden
        );
        assert_eq!(
            check(&c, Need::Control, Some(&basic("nobody", "x"))),
            Verdict::Unauthenticated
        );
        assert_eq!(check(&c, Need::Read, None), Verdict::Allowed);
        assert_eq!(
            check(&c, Need::Control, Some("Bearer abc")),
            Verdict::Unauthenticated
        );
    }

    #[test]
    fn reads_need_a_listed_user_when_admin_auth_is_all() {
        let c = config("all");
        assert_eq!(check(&c, Need::Read, None), Verdict::Unauthenticated);
        assert_eq!(
            check(&c, Need::Read, Some(&basic("viewer", "viewer-pw"))),
            Verdict::Allowed
        );
        assert_eq!(
            check(&c, Need::Read, Some(&basic("app", "app-pw"))),
            Verdict::Forbidden,
            "a valid user in neither list"
        );
        assert_eq!(check(&c, Need::Nothing, None), Verdict::Allowed);
    }

    #[test]
    fn private_reads_need_a_listed_user_unless_admin_auth_is_control() {
        let viewer = basic("viewer", "viewer-pw");
        for (mode, open) in [("control", true), ("private", false), ("all", false)] {
            let c = config(mode);
            let anonymous = check(&c, Need::PrivateRead, None);
            assert_eq!(anonymous == Verdict::Allowed, open, "{mode}");
            let listed = check(&c, Need::PrivateRead, Some(&viewer));
            assert_eq!(listed, Verdict::Allowed, "{mode}");
        }
        let private = config("private");
        assert_eq!(
            check(&private, Need::Read, None),
            Verdict::Allowed,
            "pages stay open"
        );
        assert_eq!(
            check(&private, Need::PrivateRead, Some(&basic("app", "app-pw"))),
            Verdict::Forbidden
        );
    }
}
