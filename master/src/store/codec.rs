//! Versioned records: one format byte, then the protobuf encoding of the API message. Protobuf
//! keeps unknown fields compatible both ways, so later versions read earlier records; the format
//! byte leaves room for a different encoding.

use prost::Message;

use super::StoreError;

/// The record format written by this version.
pub const FORMAT_V1: u8 = 1;

/// Encodes a record.
pub fn encode<M: Message>(m: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + m.encoded_len());
    out.push(FORMAT_V1);
    m.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// Decodes a record stored at `key`.
pub fn decode<M: Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => M::decode(body).map_err(|e| corrupt(e.to_string())),
        Some((v, _)) => Err(corrupt(format!("unknown record format {v}"))),
        None => Err(corrupt("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard::pb::master::v1::WebCluster;

    #[test]
    fn records_round_trip_and_reject_unknown_formats() {
        let wc = WebCluster {
            name: "c1".into(),
            tcp_port: 8080,
            ..Default::default()
        };
        let bytes = encode(&wc);
        assert_eq!(decode::<WebCluster>(b"k", &bytes).unwrap(), wc);
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(decode::<WebCluster>(b"k", &future).is_err());
        assert!(decode::<WebCluster>(b"k", &[]).is_err());
    }
}
