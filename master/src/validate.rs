//! Input validation shared by the admin API: every error names its field. A malformed argument
//! (a required field missing, a bad oid, name or path) is `INVALID_ARGUMENT`; a configuration
//! value that is present but unusable (a port out of range, a URL or PEM block that does not
//! parse) is `INVALID_CONFIGURATION` (README, "Errors").

use crate::error::{Error, Result};

/// Parses an object id (a UUID string), normalised to lowercase hyphenated form.
pub fn oid(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(Error::invalid(field, "required"));
    }
    uuid::Uuid::parse_str(value)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Error::invalid(field, format!("'{value}' is not a UUID")))
}

/// Cluster and worker group names: `^[a-z][a-z0-9_]{2,63}$`.
pub fn name(field: &str, value: &str) -> Result<()> {
    let b = value.as_bytes();
    let ok = (3..=64).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("'{value}' must match ^[a-z][a-z0-9_]{{2,63}}$"),
        ))
    }
}

/// A web service path: "/" or "/seg/seg" (a missing leading "/" is added, as the reference's
/// paths like "info" mean "/info"); no empty, "." or ".." segments, no trailing "/".
pub fn path(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(Error::invalid(field, "required"));
    }
    let normalised = if value.starts_with('/') {
        value.to_owned()
    } else {
        format!("/{value}")
    };
    if normalised == "/" {
        return Ok(normalised);
    }
    if normalised.len() > 1024 {
        return Err(Error::invalid(field, "longer than 1024 characters"));
    }
    for seg in normalised[1..].split('/') {
        let ok = !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b));
        if !ok {
            return Err(Error::invalid(
                field,
                format!(
                    "'{value}' is not a valid path (\"/\" or \"/a/b\": no empty, \".\" or \"..\" segments, no trailing \"/\")"
                ),
            ));
        }
    }
    Ok(normalised)
}

/// A TCP port 1..65535: 0 (unset) is a missing argument, anything above 65535 an unusable
/// configuration.
pub fn port(field: &str, value: u32) -> Result<()> {
    match value {
        0 => Err(Error::invalid(field, "required: a port 1..65535")),
        1..=65535 => Ok(()),
        _ => Err(Error::invalid_config(
            field,
            format!("{value} is not a port (1..65535)"),
        )),
    }
}

/// An absolute http(s) URL (required).
pub fn url(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "required"));
    }
    let uri: http::Uri = value
        .parse()
        .map_err(|_| Error::invalid_config(field, format!("'{value}' is not a URL")))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(Error::invalid_config(
            field,
            format!("'{value}' is not an absolute http(s) URL"),
        ));
    }
    Ok(())
}

/// A PEM block of `label` (e.g. "CERTIFICATE", "PRIVATE KEY").
pub fn pem(field: &str, value: &str, label: &str) -> Result<()> {
    if value.contains("-----BEGIN ") && value.contains(label) && value.contains("-----END ") {
        Ok(())
    } else {
        Err(Error::invalid_config(field, format!("not a PEM {label}")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("name", "cluster1").is_ok());
        assert!(name("name", "c_1").is_ok());
        for bad in ["", "ab", "1abc", "Abc", "a-b", &"a".repeat(65)] {
            assert!(name("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(path("path", "/").unwrap(), "/");
        assert_eq!(path("path", "info").unwrap(), "/info");
        assert_eq!(path("path", "/a/b-c").unwrap(), "/a/b-c");
        for bad in ["", "/a/", "//", "/a//b", "/../x", "/a/./b", "/a b", "/a?b"] {
            let e = path("webservice.path", bad).unwrap_err();
            assert!(e.to_string().contains("webservice.path"), "{bad}: {e}");
        }
    }

    /// The reason a failed check carries.
    pub(crate) fn reason(r: Result<impl std::fmt::Debug>) -> String {
        let status = tonic::Status::from(r.expect_err("the check fails"));
        switchyard::error::reason_of(&status).unwrap_or_default()
    }

    #[test]
    fn missing_or_malformed_is_an_argument_unusable_is_a_configuration() {
        assert_eq!(reason(port("p", 0)), "INVALID_ARGUMENT");
        assert_eq!(reason(port("p", 65536)), "INVALID_CONFIGURATION");
        assert_eq!(reason(url("u", "")), "INVALID_ARGUMENT");
        assert_eq!(reason(url("u", "not a url")), "INVALID_CONFIGURATION");
        assert_eq!(reason(url("u", "ftp://x")), "INVALID_CONFIGURATION");
        assert_eq!(
            reason(pem("k", "garbage", "PRIVATE KEY")),
            "INVALID_CONFIGURATION"
        );
        assert_eq!(reason(oid("oid", "nope")), "INVALID_ARGUMENT");
        assert_eq!(reason(name("name", "Bad Name")), "INVALID_ARGUMENT");
        assert_eq!(reason(path("path", "/a/../b")), "INVALID_ARGUMENT");
        // Either way the error names the field (src/error.rs adds it as a BadRequest violation).
        let status = tonic::Status::from(port("webcluster.tcp_port", 70000).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("webcluster.tcp_port"), "{status}");
    }

    #[test]
    fn oids_urls_ports() {
        assert!(oid("oid", "3eccb1fd-251b-4eda-bee9-06b3d24b1c5e").is_ok());
        assert!(oid("oid", "nope").is_err());
        assert!(url("url", "https://example.org/x").is_ok());
        for bad in ["example.org", "ftp://x", "/relative", "http://"] {
            assert!(url("url", bad).is_err(), "{bad}");
        }
        assert!(
            port("port", 0).is_err() && port("port", 65536).is_err() && port("port", 80).is_ok()
        );
    }
}
