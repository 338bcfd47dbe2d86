//! Output: aligned tables, or the API's canonical JSON (field names in lowerCamelCase, enums
//! by name, timestamps in RFC 3339, like grpcurl) through the descriptor set the master serves
//! for reflection.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::Failure;

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(switchyard::pb::FILE_DESCRIPTOR_SET)
            .expect("the built-in descriptor set decodes")
    })
}

/// `message` (of protobuf type `full_name`) as JSON.
pub fn to_json<M: prost::Message>(
    full_name: &str,
    message: &M,
) -> Result<serde_json::Value, Failure> {
    let desc = pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| Failure::Other(format!("unknown message type {full_name}")))?;
    let dynamic = DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
        .map_err(|e| Failure::Other(e.to_string()))?;
    serde_json::to_value(&dynamic).map_err(|e| Failure::Other(e.to_string()))
}

/// Prints `message` as pretty JSON.
pub fn print_json<M: prost::Message>(full_name: &str, message: &M) -> Result<(), Failure> {
    let v = to_json(full_name, message)?;
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}

/// Prints `items` (each of protobuf type `full_name`) as one pretty JSON array.
pub fn print_json_list<M: prost::Message>(full_name: &str, items: &[M]) -> Result<(), Failure> {
    let list = items
        .iter()
        .map(|m| to_json(full_name, m))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "{}",
        serde_json::to_string_pretty(&list).unwrap_or_default()
    );
    Ok(())
}

/// Prints `message` as one JSON line (streams).
pub fn print_json_line<M: prost::Message>(full_name: &str, message: &M) -> Result<(), Failure> {
    let v = to_json(full_name, message)?;
    println!("{v}");
    Ok(())
}

/// An aligned table.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, columns separated by two spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}  ", w = widths[i]));
                }
            }
            s.trim_end().to_owned()
        };
        let mut out = line(&self.header);
        for r in &self.rows {
            out.push('\n');
            out.push_str(&line(r));
        }
        out
    }

    /// Prints it.
    pub fn print(&self) {
        println!("{}", self.render());
    }
}

/// Key/value lines for one object.
pub fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        println!("{k:<width$}  {v}");
    }
}

/// An enum value's name without its prefix: `CLUSTER_STATUS_RUNNING` → `RUNNING`.
pub fn enum_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

/// A timestamp in RFC 3339 (seconds), or "-".
pub fn ts(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// Bytes in MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["NAME", "STATUS"]);
        t.row(vec!["site".into(), "RUNNING".into()]);
        t.row(vec!["a-much-longer-name".into(), "STOPPED".into()]);
        assert_eq!(
            t.render(),
            "NAME                STATUS\nsite                RUNNING\na-much-longer-name  STOPPED"
        );
    }

    #[test]
    fn json_is_the_apis_canonical_form() {
        let c = switchyard::pb::master::v1::WebCluster {
            name: "site".into(),
            tcp_port: 8080,
            status: switchyard::pb::master::v1::ClusterStatus::Running as i32,
            ..Default::default()
        };
        let v = to_json("switchyard.master.v1.WebCluster", &c).unwrap();
        assert_eq!(v["name"], "site");
        assert_eq!(v["tcpPort"], 8080);
        assert_eq!(v["status"], "CLUSTER_STATUS_RUNNING");
    }
}
