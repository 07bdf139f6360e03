//! The state file: the highest timeline pgherd has seen, kept across restarts.
//!
//! Fencing an old primary relies on knowing that a newer timeline exists.
//! A pgherd that restarts while the new primary is down and the old one is
//! back would otherwise see a single primary and send it writes. With
//! `state_file` set, the evaluator starts from what the last run saw.
//!
//! The file is two TOML keys an operator can read and, to forget the
//! history on purpose, delete:
//!
//! ```toml
//! system_identifier = 7312345678901234567
//! timeline = 3
//! ```
//!
//! It is written (to a temporary file, then renamed) each time the highest
//! timeline or the cluster changes: a few times in a cluster's life.

use std::io;
use std::path::Path;

use serde::Deserialize;

use crate::topology::Remembered;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    // TOML integers are signed 64-bit: the identifier is written as a
    // string so every u64 fits.
    system_identifier: String,
    timeline: u32,
}

/// The file's text for `r`.
pub fn render(r: &Remembered) -> String {
    format!(
        "# pgherd state: the highest primary timeline seen in this cluster.\n\
         # A primary on a lower timeline is fenced. Delete this file to forget.\n\
         system_identifier = \"{}\"\ntimeline = {}\n",
        r.system_identifier, r.timeline
    )
}

/// Parses the file's text.
pub fn parse(text: &str) -> Result<Remembered, String> {
    let f: File = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    let system_identifier = f.system_identifier.parse().map_err(|_| {
        format!(
            "system_identifier {:?} is not a number",
            f.system_identifier
        )
    })?;
    Ok(Remembered {
        system_identifier,
        timeline: f.timeline,
    })
}

/// Reads the state file; a missing file is a first start.
pub fn load(path: &Path) -> io::Result<Option<Remembered>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "state file {}: {e} (fix it, or delete it to forget the highest timeline seen)",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("reading state file {}: {e}", path.display()),
        )),
    }
}

/// Writes the state file atomically: a crash leaves the old or the new one.
pub fn save(path: &Path, r: &Remembered) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, render(r))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_identifier() {
        for id in [0, 7_312_345_678_901_234_567, u64::MAX] {
            let r = Remembered {
                system_identifier: id,
                timeline: 3,
            };
            assert_eq!(parse(&render(&r)), Ok(r));
        }
    }

    #[test]
    fn bad_files_are_reported() {
        assert!(parse("timeline = 3").is_err());
        assert!(parse("system_identifier = \"x\"\ntimeline = 3").is_err());
        assert!(parse("system_identifier = \"1\"\ntimeline = -1").is_err());
    }

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert_eq!(load(&path).unwrap(), None, "no file: first start");
        let r = Remembered {
            system_identifier: 42,
            timeline: 2,
        };
        save(&path, &r).unwrap();
        assert_eq!(load(&path).unwrap(), Some(r));
        std::fs::write(&path, "garbage").unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.to_string().contains("delete it"), "{e}");
    }
}
