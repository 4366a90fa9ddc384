//! [`StoreConfig`]: which backend to open, chosen by configuration
//! (`taskgrid server --store …`), and the one factory that opens it.

#[cfg(feature = "sqlite")]
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::{MemoryStore, Store, StoreError};
#[cfg(feature = "sqlite")]
use crate::{SqliteOptions, SqliteStore};

/// A store backend and where it keeps its data.
///
/// Parsed from text by [`FromStr`]: `memory`, `sqlite:PATH` (the SQLite
/// file, created with its directory if missing), or a PostgreSQL URL
/// (`postgres://user@host:port/db`, feature `postgres`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreConfig {
    /// [`MemoryStore`]: nothing survives the process.
    Memory,
    /// [`SqliteStore`] on this file.
    #[cfg(feature = "sqlite")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Its durability and tuning.
        options: SqliteOptions,
    },
    /// [`PostgresStore`](crate::PostgresStore) on the database at this URL.
    #[cfg(feature = "postgres")]
    Postgres {
        /// `postgres://…` or `postgresql://…`.
        url: String,
        /// How it takes and keeps the leader's lease.
        options: crate::PostgresOptions,
    },
}

impl StoreConfig {
    /// What the text form of each backend looks like, for error messages
    /// and help text.
    pub const FORMS: &'static str = match (cfg!(feature = "sqlite"), cfg!(feature = "postgres")) {
        (true, true) => "`memory`, `sqlite:PATH` or `postgres://USER@HOST:PORT/DB`",
        (true, false) => "`memory` or `sqlite:PATH` (this build has no PostgreSQL)",
        (false, true) => "`memory` or `postgres://USER@HOST:PORT/DB` (this build has no SQLite)",
        (false, false) => "`memory` (this build has no SQLite and no PostgreSQL)",
    };

    /// Opens the backend this names.
    pub fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            StoreConfig::Memory => Arc::new(MemoryStore::new()),
            #[cfg(feature = "sqlite")]
            StoreConfig::Sqlite { path, options } => Arc::new(SqliteStore::open(path, *options)?),
            #[cfg(feature = "postgres")]
            StoreConfig::Postgres { url, options } => Arc::new(crate::PostgresStore::open_with(
                url,
                "public",
                options.clone(),
            )?),
        })
    }
}

impl std::fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Memory => f.write_str("memory"),
            #[cfg(feature = "sqlite")]
            StoreConfig::Sqlite { path, .. } => write!(f, "sqlite:{}", path.display()),
            #[cfg(feature = "postgres")]
            StoreConfig::Postgres { url, .. } => f.write_str(&crate::postgres::redact(url)),
        }
    }
}

/// Why a store's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadStoreConfig(String);

impl FromStr for StoreConfig {
    type Err = BadStoreConfig;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory" {
            return Ok(StoreConfig::Memory);
        }
        #[cfg_attr(not(feature = "sqlite"), allow(unused_variables))]
        let (scheme, rest) = s.split_once(':').unwrap_or((s, ""));
        match scheme {
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Ok(StoreConfig::Postgres {
                url: s.to_owned(),
                options: crate::PostgresOptions::default(),
            }),
            #[cfg(feature = "sqlite")]
            "sqlite" if rest.trim().is_empty() => Err(BadStoreConfig(format!(
                "store `{s}` names no file: write `sqlite:PATH`, e.g. `sqlite:taskgrid-data/taskgrid.db`"
            ))),
            #[cfg(feature = "sqlite")]
            "sqlite" => Ok(StoreConfig::Sqlite {
                path: PathBuf::from(rest),
                options: SqliteOptions::default(),
            }),
            _ => Err(BadStoreConfig(format!(
                "unknown store `{s}`: expected {}",
                StoreConfig::FORMS
            ))),
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form_and_names_what_is_wrong() {
        assert_eq!("memory".parse(), Ok(StoreConfig::Memory));
        assert_eq!(
            "sqlite:/var/lib/tg/taskgrid.db".parse(),
            Ok(StoreConfig::Sqlite {
                path: PathBuf::from("/var/lib/tg/taskgrid.db"),
                options: SqliteOptions::default(),
            })
        );
        let e = "sqlite:".parse::<StoreConfig>().unwrap_err().to_string();
        assert!(e.contains("names no file"), "{e}");
        let e = "mysql://x".parse::<StoreConfig>().unwrap_err().to_string();
        assert!(e.contains("unknown store `mysql://x`"), "{e}");
        assert!(e.contains("sqlite:PATH"), "{e}");
        let e = "Memory".parse::<StoreConfig>().unwrap_err().to_string();
        assert!(e.contains("unknown store"), "{e}");
        #[cfg(feature = "postgres")]
        {
            let url = "postgres://tg:s3cret@db.example:5432/grid";
            let config: StoreConfig = url.parse().unwrap();
            assert!(matches!(&config, StoreConfig::Postgres { url: u, .. } if u == url));
            // Shown without its password.
            assert_eq!(config.to_string(), "postgres://tg:***@db.example:5432/grid");
            assert!(matches!(
                "postgresql://h/db".parse(),
                Ok(StoreConfig::Postgres { .. })
            ));
        }
    }

    #[test]
    fn opens_the_backend_it_names() -> Result<(), StoreError> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub").join("t.db");
        let config: StoreConfig = format!("sqlite:{}", path.display())
            .parse()
            .map_err(|e: BadStoreConfig| StoreError::Invalid(e.to_string()))?;
        let store = config.open()?;
        assert!(store.load_active()?.is_empty());
        assert!(path.exists(), "the SQLite file is created");
        assert_eq!(config.to_string(), format!("sqlite:{}", path.display()));
        assert!(StoreConfig::Memory.open()?.load_active()?.is_empty());
        Ok(())
    }
}
