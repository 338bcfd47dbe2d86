//! A worker's record, `ID.json` in the runtime directory (0600, replaced atomically: written to
//! a temporary file, then renamed): what a new agent needs to adopt the worker or, if it is
//! gone, to start it again as it was. The process (pid and start time, so that a reused pid is
//! never adopted), type, control socket, options (labels included: monitors recognise their
//! workers by them), restarts so far, and the configuration last applied to it
//! ([`super::applied::Applied`]). Protobuf values are stored as hex of their wire encoding.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use switchyard::pb::agent::v1::{self as pb, WorkerType};

use super::applied::Applied;
use super::pid::ProcessId;

/// The record format; a record of another version is not adopted.
pub const VERSION: u32 = 1;

/// A protobuf message stored as hex of its encoding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pb<T>(pub T);

impl<T: prost::Message> Serialize for Pb<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = self.0.encode_to_vec();
        s.serialize_str(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }
}

impl<'de, T: prost::Message + Default> Deserialize<'de> for Pb<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 || !text.is_ascii() {
            return Err(D::Error::custom("odd or non-ASCII hex"));
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(D::Error::custom)?;
        T::decode(bytes.as_slice())
            .map(Pb)
            .map_err(D::Error::custom)
    }
}

/// One worker's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// [`VERSION`].
    pub version: u32,
    /// The worker id.
    pub id: String,
    /// "web" or "router".
    pub kind: String,
    /// Its process (none while the agent restarts it).
    pub process: Option<ProcessId>,
    /// Its control socket.
    pub socket: PathBuf,
    /// When StartWorker was received, ms since the epoch.
    pub created_ms: u64,
    /// When it became ready, ms since the epoch.
    pub started_ms: Option<u64>,
    /// Times the agent started it again after a failure.
    pub restarts: u32,
    /// A readable copy of its labels (the options hold the same).
    pub labels: BTreeMap<String, String>,
    /// The options it was started with.
    pub options: Pb<pb::WorkerOptions>,
    /// The configuration last applied to it.
    pub applied: Applied,
}

/// A file that looks like a record but is not a valid one, and why.
pub type Unusable = (PathBuf, String);

/// Milliseconds since the epoch.
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The time `ms` milliseconds after the epoch.
pub fn from_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// The record's `kind` of a worker type.
pub fn kind_name(kind: WorkerType) -> &'static str {
    if kind == WorkerType::Router {
        "router"
    } else {
        "web"
    }
}

/// The worker type of a record's `kind`.
pub fn kind_of(name: &str) -> Option<WorkerType> {
    match name {
        "web" => Some(WorkerType::Web),
        "router" => Some(WorkerType::Router),
        _ => None,
    }
}

impl Record {
    /// Writes the record to `path` atomically (0600).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{}.tmp", name.unwrap_or_default()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        drop(file);
        std::fs::rename(&tmp, path)
    }

    /// Every record in `dir`, with the files that are not valid records (left in place).
    pub fn read_all(dir: &Path) -> std::io::Result<(Vec<Record>, Vec<Unusable>)> {
        let mut records = Vec::new();
        let mut bad = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(name) = name.filter(|n| n.ends_with(".json") && !n.starts_with('.')) else {
                continue;
            };
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Record>(&bytes).map_err(|e| e.to_string())
                })
                .and_then(|r| {
                    if r.version != VERSION {
                        Err(format!("record version {} (expected {VERSION})", r.version))
                    } else if format!("{}.json", r.id) != name || kind_of(&r.kind).is_none() {
                        Err("the record's id or type does not match".to_owned())
                    } else {
                        Ok(r)
                    }
                });
            match parsed {
                Ok(r) => records.push(r),
                Err(e) => bad.push((path, e)),
            }
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((records, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn record(id: &str) -> Record {
        let options = pb::WorkerOptions {
            labels: [("switchyard.cluster".to_owned(), "c1".to_owned())].into(),
            env: [("SECRET".to_owned(), "s".to_owned())].into(),
            ..Default::default()
        };
        Record {
            version: VERSION,
            id: id.into(),
            kind: "web".into(),
            process: ProcessId::current(),
            socket: "/run/x/w1.sock".into(),
            created_ms: 1,
            started_ms: Some(2),
            restarts: 3,
            labels: options
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            options: Pb(options),
            applied: Applied::default(),
        }
    }

    #[test]
    fn records_round_trip_privately_and_bad_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let r = record("w1");
        let path = dir.path().join("w1.json");
        r.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("junk.json"), "{").unwrap();
        record("other").write(&dir.path().join("w2.json")).unwrap();
        let (records, bad) = Record::read_all(dir.path()).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].process, r.process);
        assert_eq!(records[0].options, r.options);
        assert_eq!(records[0].restarts, 3);
        let mut bad: Vec<_> = bad
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        bad.sort();
        assert_eq!(bad, ["junk.json", "w2.json"]);
    }
}
