//! Finding the installed PostgreSQL server programs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::LocalPgError;

/// The directory holding `postgres`, `initdb`, `pg_basebackup`, `psql`.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    bindir: PathBuf,
}

impl PgBinaries {
    /// Looks in `$PGHERD_PG_BINDIR`, then `pg_config --bindir`, then the newest
    /// `/usr/lib/postgresql/<version>/bin` (Debian installs servers there and
    /// puts only client wrappers on the PATH).
    pub fn find() -> Result<PgBinaries, LocalPgError> {
        let mut candidates = Vec::new();
        if let Some(dir) = std::env::var_os("PGHERD_PG_BINDIR") {
            candidates.push(PathBuf::from(dir));
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            if out.status.success() {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                candidates.push(PathBuf::from(dir));
            }
        }
        candidates.extend(debian_bindirs());
        candidates
            .into_iter()
            .find(|d| is_server_bindir(d))
            .map(|bindir| PgBinaries { bindir })
            .ok_or(LocalPgError::NotInstalled)
    }

    /// The path of program `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

fn is_server_bindir(dir: &Path) -> bool {
    ["postgres", "initdb", "pg_basebackup", "psql", "pg_isready"]
        .iter()
        .all(|p| dir.join(p).is_file())
}

/// `/usr/lib/postgresql/*/bin`, newest major version first.
fn debian_bindirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.into_iter().map(|(_, p)| p).collect()
}
