//! Configuration layers of the daemons: an optional TOML file (`--config`), overridden by the
//! environment (`SWITCHYARD_*`), overridden by flags. clap handles flags and environment and
//! reports which one a value came from; a file value applies only where neither set it.

use std::path::Path;

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::de::DeserializeOwned;

/// Reads a TOML configuration file; unknown keys and invalid values are errors naming the key.
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        format!(
            "invalid config file {}: {}",
            path.display(),
            e.to_string().trim_end()
        )
    })
}

/// The value of argument `id`: from the command line or environment if set there, else from
/// the file, else clap's default (`parsed`).
pub fn layered<T>(matches: &ArgMatches, id: &str, parsed: T, file: Option<T>) -> T {
    match matches.value_source(id) {
        Some(ValueSource::CommandLine | ValueSource::EnvVariable) => parsed,
        _ => file.unwrap_or(parsed),
    }
}

/// Like [`layered`] for optional values.
pub fn layered_opt<T>(
    matches: &ArgMatches,
    id: &str,
    parsed: Option<T>,
    file: Option<T>,
) -> Option<T> {
    match matches.value_source(id) {
        Some(ValueSource::CommandLine | ValueSource::EnvVariable) => parsed,
        _ => file.or(parsed),
    }
}

/// Parses a whole-second duration: a number with a unit `s`, `m`, `h` or `d` (`30s`, `1h`,
/// `7d`), or plain seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let (number, scale) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        Some((i, 'd')) => (&t[..i], 86_400),
        _ => (t, 1),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&s| s > 0)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is not a duration (e.g. 30s, 15m, 1h, 7d)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    #[test]
    fn durations_take_units() {
        let secs = |t| parse_duration(t).map(|d| d.as_secs());
        assert_eq!(secs("30s"), Ok(30));
        assert_eq!(secs("15m"), Ok(900));
        assert_eq!(secs("1h"), Ok(3600));
        assert_eq!(secs("7d"), Ok(604_800));
        assert_eq!(secs("45"), Ok(45));
        for bad in ["", "0s", "1w", "-1h", "h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        port: Option<u16>,
    }

    fn cmd() -> Command {
        Command::new("t").arg(
            Arg::new("port")
                .long("port")
                .env("SWITCHYARD_TEST_CONFIG_PORT")
                .default_value("1")
                .value_parser(clap::value_parser!(u16)),
        )
    }

    #[test]
    fn the_file_fills_only_what_flags_and_environment_left_unset() {
        let m = cmd().get_matches_from(["t"]);
        assert_eq!(layered(&m, "port", 1u16, Some(7)), 7);
        let m = cmd().get_matches_from(["t", "--port", "9"]);
        assert_eq!(layered(&m, "port", 9u16, Some(7)), 9);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let dir = std::env::temp_dir().join(format!("sy-config-{}", std::process::id()));
        std::fs::write(&dir, "port = 3\n").unwrap();
        assert_eq!(read_file::<File>(&dir).unwrap().port, Some(3));
        std::fs::write(&dir, "prot = 3\n").unwrap();
        let e = read_file::<File>(&dir).unwrap_err();
        assert!(e.contains("unknown field `prot`"), "{e}");
        std::fs::write(&dir, "port = \"x\"\n").unwrap();
        let e = read_file::<File>(&dir).unwrap_err();
        assert!(e.contains("port"), "{e}");
        let _ = std::fs::remove_file(&dir);
    }
}
