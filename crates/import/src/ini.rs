//! pgbouncer.ini as pgbouncer reads it: `[section]` headers, `key = value`
//! lines, `;` and `#` comments, and `%include FILE` anywhere.

/// One setting, where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    pub key: String,
    pub value: String,
    /// `file:line`, for the notes.
    pub at: String,
}

/// Reads `text` (from `name`); `include` gives the text of a `%include`d
/// file, or why it cannot.
pub fn parse(
    name: &str,
    text: &str,
    include: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut section = String::new();
    read(name, text, include, &mut section, &mut entries, 0)?;
    Ok(entries)
}

fn read(
    name: &str,
    text: &str,
    include: &dyn Fn(&str) -> Result<String, String>,
    section: &mut String,
    entries: &mut Vec<Entry>,
    depth: usize,
) -> Result<(), String> {
    for (i, raw) in text.lines().enumerate() {
        let at = format!("{name}:{}", i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(file) = line.strip_prefix("%include") {
            let file = file.trim();
            if depth > 8 {
                return Err(format!("{at}: %include nested too deep"));
            }
            let included = include(file).map_err(|e| format!("{at}: %include {file}: {e}"))?;
            read(file, &included, include, section, entries, depth + 1)?;
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(s) = rest.strip_suffix(']') else {
                return Err(format!("{at}: a section header without `]`"));
            };
            *section = s.trim().to_ascii_lowercase();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("{at}: not `key = value`"));
        };
        entries.push(Entry {
            section: section.clone(),
            key: key.trim().to_owned(),
            value: value.trim().to_owned(),
            at,
        });
    }
    Ok(())
}

/// A `[databases]` value: `key=value` pairs, values optionally quoted
/// with `'`.
pub fn connstr(value: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = value.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..].trim_start();
        let (val, next) = match after.strip_prefix('\'') {
            Some(quoted) => match quoted.find('\'') {
                Some(end) => (quoted[..end].to_owned(), &quoted[end + 1..]),
                None => (quoted.to_owned(), ""),
            },
            None => match after.find(char::is_whitespace) {
                Some(end) => (after[..end].to_owned(), &after[end..]),
                None => (after.to_owned(), ""),
            },
        };
        pairs.push((key, val));
        rest = next.trim_start();
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_comments_and_includes() {
        let main = "[databases]\n; a comment\nweb1 = host=localhost port=5433 dbname=web1\n\
                    %include extra.ini\n[pgbouncer]\nlisten_port = 6432\n";
        let include = |f: &str| match f {
            "extra.ini" => Ok("# more\nweb2 = host=localhost dbname=web2\n".to_owned()),
            _ => Err("no such file".to_owned()),
        };
        let e = parse("pgbouncer.ini", main, &include).unwrap();
        let keys: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.section.as_str(), e.key.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("databases", "web1"),
                ("databases", "web2"),
                ("pgbouncer", "listen_port")
            ]
        );
        assert_eq!(e[1].at, "extra.ini:2");
        assert!(parse("x", "%include nope\n", &include)
            .unwrap_err()
            .contains("no such file"));
        assert!(parse("x", "[pgbouncer\n", &include).is_err());
    }

    #[test]
    fn connection_strings() {
        let pairs = connstr("host=localhost port=5433 dbname='my db' user=app");
        assert_eq!(pairs[2], ("dbname".to_owned(), "my db".to_owned()));
        assert_eq!(pairs.len(), 4);
    }
}
