//! Reading the config file: the one place ctune opens it. Parsing and validation are the
//! core's ([`ctune_core::config::parse`]); a missing file at the default path means the
//! embedded defaults.

use std::path::Path;

use ctune_core::config::{Config, ConfigError, Source, parse};

/// Loads the config: an explicit path must exist; the default path may be absent, in
/// which case the embedded defaults apply.
pub fn load(explicit: Option<&Path>, default_path: &Path) -> Result<(Config, Source), ConfigError> {
    let (path, required) = match explicit {
        Some(p) => (p, true),
        None => (default_path, false),
    };
    let text =
        crate::sense::kfile::trusted(path).and_then(|()| crate::sense::kfile::read_bounded(path));
    match text {
        Ok(text) => Ok((parse(&text, path)?, Source::File(path.to_path_buf()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            Ok((Config::default(), Source::Embedded))
        }
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_explicit_file_is_an_error_but_default_path_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        assert!(matches!(
            load(Some(&missing), &missing),
            Err(ConfigError::Read { .. })
        ));
        let (cfg, src) = load(None, &missing).unwrap();
        assert_eq!(src, Source::Embedded);
        assert_eq!(cfg, Config::default());
    }
}
