//! `auth_type = "hba"`: client authentication by rules in PostgreSQL's
//! `pg_hba.conf` format (pgbouncer's `auth_hba_file`), so a DBA can say
//! "scram for the application network, reject the rest, peer on the Unix
//! socket" as on the server itself.
//!
//! Each line is `TYPE DATABASE USER [ADDRESS] METHOD`; the first line that
//! matches a connection decides. What pgherd reads: types `local`, `host`,
//! `hostssl`, `hostnossl`; databases and users `all`, `sameuser` (database)
//! or comma-separated names; addresses `all` or CIDR (`10.0.0.0/8`,
//! `::1/128`, a bare address is /32 or /128); methods `trust`, `reject`,
//! `md5`, `password`, `scram-sha-256`, `peer`. Anything else (host names,
//! `@file`, `+group`, options after the method, `cert`, `ldap`...) is an
//! error naming the line, never silently a weaker rule.

use std::net::IpAddr;

use crate::kinds::AuthType;

/// The rules of an `auth_hba_file`, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRules(Vec<Rule>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    line: usize,
    kind: Kind,
    databases: Names,
    users: Names,
    /// `None` for `local` lines.
    address: Option<Address>,
    method: HbaMethod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    All,
    /// `sameuser`: the database named as the user (databases only).
    SameUser,
    List(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Address {
    All,
    Net(IpAddr, u8),
}

/// What a matching line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    Auth(AuthType),
    Reject,
}

/// A connection, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct HbaConnection<'a> {
    /// The client's address; `None` on a Unix-domain socket.
    pub ip: Option<IpAddr>,
    pub tls: bool,
    pub database: &'a str,
    pub user: &'a str,
}

impl HbaRules {
    /// Parses the file's text; an error names the line.
    pub fn parse(text: &str) -> Result<HbaRules, String> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("");
            let fields: Vec<&str> = content.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            rules.push(rule(line, &fields).map_err(|e| format!("line {line}: {e}"))?);
        }
        Ok(HbaRules(rules))
    }

    /// The method of the first line that matches `c`, with its line
    /// number; `None`: no line does.
    pub fn find(&self, c: &HbaConnection<'_>) -> Option<(HbaMethod, usize)> {
        let ip = c.ip.map(|ip| ip.to_canonical());
        self.0
            .iter()
            .find(|r| r.matches(ip, c))
            .map(|r| (r.method, r.line))
    }
}

impl Rule {
    fn matches(&self, ip: Option<IpAddr>, c: &HbaConnection<'_>) -> bool {
        let kind = match (self.kind, ip) {
            (Kind::Local, None) => true,
            (Kind::Host, Some(_)) => true,
            (Kind::HostSsl, Some(_)) => c.tls,
            (Kind::HostNoSsl, Some(_)) => !c.tls,
            _ => false,
        };
        let database = match &self.databases {
            Names::All => true,
            Names::SameUser => c.database == c.user,
            Names::List(names) => names.iter().any(|n| n == c.database),
        };
        let user = match &self.users {
            Names::All => true,
            Names::SameUser => false,
            Names::List(names) => names.iter().any(|n| n == c.user),
        };
        let address = match (self.address, ip) {
            (None, _) | (Some(Address::All), _) => true,
            (Some(Address::Net(net, prefix)), Some(ip)) => in_net(ip, net, prefix),
            (Some(Address::Net(..)), None) => false,
        };
        kind && database && user && address
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

fn rule(line: usize, fields: &[&str]) -> Result<Rule, String> {
    let kind = match fields[0] {
        "local" => Kind::Local,
        "host" => Kind::Host,
        "hostssl" => Kind::HostSsl,
        "hostnossl" => Kind::HostNoSsl,
        other => return Err(format!("unknown connection type {other:?}")),
    };
    let wanted = if kind == Kind::Local { 4 } else { 5 };
    if fields.len() != wanted {
        return Err(format!(
            "expected {wanted} fields (TYPE DATABASE USER{} METHOD), found {}; \
             options after the method are not supported",
            if kind == Kind::Local { "" } else { " ADDRESS" },
            fields.len()
        ));
    }
    let databases = names(fields[1], true)?;
    let users = names(fields[2], false)?;
    let address = match kind {
        Kind::Local => None,
        _ => Some(address(fields[3])?),
    };
    let method = match fields[wanted - 1] {
        "trust" => HbaMethod::Auth(AuthType::Trust),
        "reject" => HbaMethod::Reject,
        "md5" => HbaMethod::Auth(AuthType::Md5),
        "password" => HbaMethod::Auth(AuthType::Plain),
        "scram-sha-256" => HbaMethod::Auth(AuthType::ScramSha256),
        "peer" if kind == Kind::Local => HbaMethod::Auth(AuthType::Peer),
        "peer" => return Err("peer is for local lines only".into()),
        other => return Err(format!("unsupported method {other:?}")),
    };
    Ok(Rule {
        line,
        kind,
        databases,
        users,
        address,
        method,
    })
}

fn names(field: &str, database: bool) -> Result<Names, String> {
    match field {
        "all" => return Ok(Names::All),
        "sameuser" if database => return Ok(Names::SameUser),
        _ => {}
    }
    let list: Vec<String> = field
        .split(',')
        .map(|n| n.trim_matches('"').to_owned())
        .collect();
    if let Some(bad) = list
        .iter()
        .find(|n| n.is_empty() || n.starts_with('@') || n.starts_with('+'))
    {
        return Err(format!(
            "{bad:?}: empty names, @file and +group are not supported"
        ));
    }
    Ok(Names::List(list))
}

fn address(field: &str) -> Result<Address, String> {
    if field == "all" {
        return Ok(Address::All);
    }
    let (ip, prefix) = match field.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (field, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| {
        format!("{field:?} is not an address in CIDR form (host names are not supported)")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{field:?}: bad prefix length"))?,
    };
    Ok(Address::Net(ip, prefix))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FILE: &str = "
# TYPE     DATABASE   USER      ADDRESS        METHOD
local      all        backup                   peer
hostnossl  postgres   all       127.0.0.1/32   reject
host       app        app       10.0.0.0/8     scram-sha-256
host       sameuser   all       ::1            md5   # trailing comment
hostssl    all        \"ops\",dba all          password
host       all        all       all            reject
";

    fn find(ip: Option<&str>, tls: bool, database: &str, user: &str) -> Option<(HbaMethod, usize)> {
        let rules = HbaRules::parse(FILE).unwrap();
        let ip = ip.map(|ip| ip.parse().unwrap());
        rules.find(&HbaConnection {
            ip,
            tls,
            database,
            user,
        })
    }

    #[test]
    fn the_first_matching_line_decides() {
        let auth = HbaMethod::Auth;
        assert_eq!(
            find(None, false, "app", "backup"),
            Some((auth(AuthType::Peer), 3))
        );
        assert_eq!(
            find(None, false, "app", "app"),
            None,
            "no local line for app"
        );
        assert_eq!(
            find(Some("127.0.0.1"), false, "postgres", "x"),
            Some((HbaMethod::Reject, 4))
        );
        assert_eq!(
            find(Some("10.1.2.3"), false, "app", "app"),
            Some((auth(AuthType::ScramSha256), 5))
        );
        // An IPv4 client on an IPv6 listener is matched as IPv4.
        assert_eq!(
            find(Some("::ffff:10.1.2.3"), true, "app", "app"),
            Some((auth(AuthType::ScramSha256), 5))
        );
        assert_eq!(
            find(Some("11.0.0.1"), false, "app", "app"),
            Some((HbaMethod::Reject, 8))
        );
        assert_eq!(
            find(Some("::1"), false, "bob", "bob"),
            Some((auth(AuthType::Md5), 6))
        );
        assert_eq!(
            find(Some("::1"), false, "app", "bob"),
            Some((HbaMethod::Reject, 8))
        );
        assert_eq!(
            find(Some("192.0.2.1"), true, "x", "ops"),
            Some((auth(AuthType::Plain), 7))
        );
        assert_eq!(
            find(Some("192.0.2.1"), false, "x", "ops"),
            Some((HbaMethod::Reject, 8))
        );
    }

    #[test]
    fn what_is_not_understood_is_an_error_naming_the_line() {
        for (text, expect) in [
            ("host all all example.com md5", "line 1: \"example.com\""),
            (
                "\n\nhost all all all ldap",
                "line 3: unsupported method \"ldap\"",
            ),
            (
                "host all all all md5 clientcert=1",
                "line 1: expected 5 fields",
            ),
            ("host all +admins all md5", "+group"),
            ("host all all 10.0.0.0/33 md5", "bad prefix"),
            ("host all all all peer", "local lines only"),
            ("hostgssenc all all all md5", "unknown connection type"),
        ] {
            let err = HbaRules::parse(text).unwrap_err();
            assert!(err.contains(expect), "{err:?} should say {expect}");
        }
    }
}
