//! WAMP messages: codes, the serializers (`wamp.2.json`, `wamp.2.msgpack`, `wamp.2.cbor`) and the frames
//! the router sends (encoded at most once per serializer however many peers receive them).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Message type codes of the Basic Profile (and CHALLENGE/AUTHENTICATE for router links).
pub mod code {
    pub const HELLO: u64 = 1;
    pub const WELCOME: u64 = 2;
    pub const ABORT: u64 = 3;
    pub const CHALLENGE: u64 = 4;
    pub const AUTHENTICATE: u64 = 5;
    pub const GOODBYE: u64 = 6;
    pub const ERROR: u64 = 8;
    pub const PUBLISH: u64 = 16;
    pub const PUBLISHED: u64 = 17;
    pub const SUBSCRIBE: u64 = 32;
    pub const SUBSCRIBED: u64 = 33;
    pub const UNSUBSCRIBE: u64 = 34;
    pub const UNSUBSCRIBED: u64 = 35;
    pub const EVENT: u64 = 36;
    pub const CALL: u64 = 48;
    pub const CANCEL: u64 = 49;
    pub const RESULT: u64 = 50;
    pub const REGISTER: u64 = 64;
    pub const REGISTERED: u64 = 65;
    pub const UNREGISTER: u64 = 66;
    pub const UNREGISTERED: u64 = 67;
    pub const INVOCATION: u64 = 68;
    pub const INTERRUPT: u64 = 69;
    pub const YIELD: u64 = 70;
}

/// Error and close URIs the router uses.
pub mod uri {
    pub const NO_SUCH_REALM: &str = "wamp.error.no_such_realm";
    pub const NOT_AUTHORIZED: &str = "wamp.error.not_authorized";
    pub const PROTOCOL_VIOLATION: &str = "wamp.error.protocol_violation";
    pub const INVALID_URI: &str = "wamp.error.invalid_uri";
    pub const NO_SUCH_PROCEDURE: &str = "wamp.error.no_such_procedure";
    pub const PROCEDURE_ALREADY_EXISTS: &str = "wamp.error.procedure_already_exists";
    pub const NO_SUCH_REGISTRATION: &str = "wamp.error.no_such_registration";
    pub const NO_SUCH_SUBSCRIPTION: &str = "wamp.error.no_such_subscription";
    pub const CANCELED: &str = "wamp.error.canceled";
    pub const GOODBYE_AND_OUT: &str = "wamp.close.goodbye_and_out";
    pub const SYSTEM_SHUTDOWN: &str = "wamp.close.system_shutdown";
}

/// A WebSocket subprotocol the router speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serializer {
    /// `wamp.2.json`: text frames.
    Json,
    /// `wamp.2.msgpack`: binary frames.
    MsgPack,
    /// `wamp.2.cbor`: binary frames.
    Cbor,
}

impl Serializer {
    /// Every subprotocol offered, in the router's order of preference.
    pub const ALL: [Serializer; 3] = [Serializer::Json, Serializer::MsgPack, Serializer::Cbor];

    /// The subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Serializer::Json => "wamp.2.json",
            Serializer::MsgPack => "wamp.2.msgpack",
            Serializer::Cbor => "wamp.2.cbor",
        }
    }

    /// The first of the client's offered subprotocols (comma-separated header values) that the
    /// router speaks.
    pub fn negotiate<'a>(offered: impl Iterator<Item = &'a str>) -> Option<Serializer> {
        offered
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find_map(|p| Serializer::ALL.into_iter().find(|s| s.subprotocol() == p))
    }

    /// Decodes one WebSocket message into a WAMP message (a JSON array).
    pub fn decode(self, message: &Message) -> Result<Vec<Value>, String> {
        let value = match (self, message) {
            (Serializer::Json, Message::Text(t)) => {
                serde_json::from_str::<Value>(t.as_str()).map_err(|e| format!("bad JSON: {e}"))?
            }
            (Serializer::MsgPack, Message::Binary(b)) => {
                let mut slice: &[u8] = b;
                let v = rmpv::decode::read_value(&mut slice)
                    .map_err(|e| format!("bad MessagePack: {e}"))?;
                from_msgpack(v)
            }
            (Serializer::Cbor, Message::Binary(b)) => {
                let v: ciborium::Value =
                    ciborium::from_reader(&b[..]).map_err(|e| format!("bad CBOR: {e}"))?;
                from_cbor(v)
            }
            _ => return Err("frame type does not match the serializer".to_owned()),
        };
        match value {
            Value::Array(items) if items.first().and_then(Value::as_u64).is_some() => Ok(items),
            _ => Err("a WAMP message is an array starting with its type code".to_owned()),
        }
    }
}

/// An outgoing message, encoded lazily once per serializer.
#[derive(Debug)]
pub struct Frame {
    value: Value,
    json: OnceLock<String>,
    msgpack: OnceLock<Bytes>,
    cbor: OnceLock<Bytes>,
}

impl Frame {
    /// A frame for `value` (a WAMP message array).
    pub fn new(value: Value) -> Arc<Frame> {
        Arc::new(Frame {
            value,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
            cbor: OnceLock::new(),
        })
    }

    /// The message.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The WebSocket message for `serializer`.
    pub fn encode(&self, serializer: Serializer) -> Message {
        match serializer {
            Serializer::Json => Message::text(
                self.json
                    .get_or_init(|| self.value.to_string())
                    .as_str()
                    .to_owned(),
            ),
            Serializer::MsgPack => Message::binary(
                self.msgpack
                    .get_or_init(|| {
                        let mut buf = Vec::new();
                        // Writing into a Vec cannot fail.
                        let _ = rmpv::encode::write_value(&mut buf, &to_msgpack(&self.value));
                        Bytes::from(buf)
                    })
                    .clone(),
            ),
            Serializer::Cbor => Message::binary(
                self.cbor
                    .get_or_init(|| {
                        let mut buf = Vec::new();
                        // Writing a JSON value into a Vec cannot fail.
                        let _ = ciborium::into_writer(&self.value, &mut buf);
                        Bytes::from(buf)
                    })
                    .clone(),
            ),
        }
    }
}

fn from_cbor(v: ciborium::Value) -> Value {
    use ciborium::Value as C;
    match v {
        C::Null => Value::Null,
        C::Bool(b) => Value::Bool(b),
        C::Integer(i) => {
            let i = i128::from(i);
            u64::try_from(i)
                .map(Value::from)
                .or_else(|_| i64::try_from(i).map(Value::from))
                .unwrap_or(Value::Null)
        }
        C::Float(f) => json!(f),
        C::Text(s) => Value::String(s),
        C::Bytes(b) => Value::Array(b.into_iter().map(Value::from).collect()),
        C::Array(a) => Value::Array(a.into_iter().map(from_cbor).collect()),
        C::Map(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        C::Text(s) => s,
                        other => format!("{other:?}"),
                    };
                    (k, from_cbor(v))
                })
                .collect::<Map<String, Value>>(),
        ),
        C::Tag(_, inner) => from_cbor(*inner),
        _ => Value::Null,
    }
}

fn from_msgpack(v: rmpv::Value) -> Value {
    use rmpv::Value as M;
    match v {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(b),
        M::Integer(i) => i
            .as_u64()
            .map(Value::from)
            .or_else(|| i.as_i64().map(Value::from))
            .unwrap_or(Value::Null),
        M::F32(f) => json!(f),
        M::F64(f) => json!(f),
        M::String(s) => Value::String(s.into_str().unwrap_or_default()),
        // WAMP's JSON form of binary: "\0" + base64; the router only relays payloads, so a
        // lossless byte array is enough here.
        M::Binary(b) => Value::Array(b.into_iter().map(Value::from).collect()),
        M::Array(a) => Value::Array(a.into_iter().map(from_msgpack).collect()),
        M::Map(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        M::String(s) => s.into_str().unwrap_or_default(),
                        other => other.to_string(),
                    };
                    (k, from_msgpack(v))
                })
                .collect::<Map<String, Value>>(),
        ),
        M::Ext(_, b) => Value::Array(b.into_iter().map(Value::from).collect()),
    }
}

fn to_msgpack(v: &Value) -> rmpv::Value {
    use rmpv::Value as M;
    match v {
        Value::Null => M::Nil,
        Value::Bool(b) => M::Boolean(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                M::from(u)
            } else if let Some(i) = n.as_i64() {
                M::from(i)
            } else {
                M::F64(n.as_f64().unwrap_or_default())
            }
        }
        Value::String(s) => M::from(s.as_str()),
        Value::Array(a) => M::Array(a.iter().map(to_msgpack).collect()),
        Value::Object(o) => M::Map(
            o.iter()
                .map(|(k, v)| (M::from(k.as_str()), to_msgpack(v)))
                .collect(),
        ),
    }
}

/// Reads the fields of a received message, turning a missing or mistyped one into a protocol
/// violation that names it.
#[derive(Debug)]
pub struct Fields<'a>(pub &'a [Value]);

impl Fields<'_> {
    /// The message type code.
    pub fn code(&self) -> u64 {
        self.0.first().and_then(Value::as_u64).unwrap_or_default()
    }

    /// Field `i` as an id (a positive integer).
    pub fn id(&self, i: usize, what: &str) -> Result<u64, String> {
        self.0
            .get(i)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("{what} must be an integer"))
    }

    /// Field `i` as a string.
    pub fn str(&self, i: usize, what: &str) -> Result<&str, String> {
        self.0
            .get(i)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{what} must be a string"))
    }

    /// Field `i` as a dictionary (absent: empty).
    pub fn dict(&self, i: usize, what: &str) -> Result<Map<String, Value>, String> {
        match self.0.get(i) {
            None => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(_) => Err(format!("{what} must be a dictionary")),
        }
    }

    /// The optional trailing payload from field `i`: `args` (a list) and `kwargs` (a dictionary).
    pub fn payload(&self, i: usize) -> Result<Payload, String> {
        let args = match self.0.get(i) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(_) => return Err("arguments must be a list".to_owned()),
        };
        let kwargs = match self.0.get(i + 1) {
            None => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => return Err("keyword arguments must be a dictionary".to_owned()),
        };
        Ok(Payload { args, kwargs })
    }
}

/// The application payload of PUBLISH, EVENT, CALL, INVOCATION, YIELD, RESULT and ERROR.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    /// Positional arguments.
    pub args: Option<Vec<Value>>,
    /// Keyword arguments.
    pub kwargs: Option<Map<String, Value>>,
}

impl Payload {
    /// Appends the payload to `message`, in the shortest valid form.
    pub fn append_to(&self, mut message: Vec<Value>) -> Value {
        match (&self.args, &self.kwargs) {
            (None, None) => {}
            (args, None) => message.push(Value::Array(args.clone().unwrap_or_default())),
            (args, Some(kw)) => {
                message.push(Value::Array(args.clone().unwrap_or_default()));
                message.push(Value::Object(kw.clone()));
            }
        }
        Value::Array(message)
    }
}

/// Whether `uri` is a valid WAMP URI (loose rules: dot-separated non-empty components without
/// whitespace or `#`).
pub fn valid_uri(uri: &str) -> bool {
    !uri.is_empty()
        && uri
            .split('.')
            .all(|c| !c.is_empty() && !c.chars().any(|ch| ch.is_whitespace() || ch == '#'))
}

/// A new random id in WAMP's id range [1, 2^53].
pub fn new_id() -> u64 {
    loop {
        let id = rand::random::<u64>() & ((1 << 53) - 1);
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_the_first_spoken_subprotocol() {
        assert_eq!(
            Serializer::negotiate(["wamp.2.ubjson, wamp.2.msgpack", "wamp.2.json"].into_iter()),
            Some(Serializer::MsgPack)
        );
        assert_eq!(Serializer::negotiate(["mqtt"].into_iter()), None);
    }

    #[test]
    fn msgpack_round_trips_a_message() {
        let v = json!([16, 7, {"acknowledge": true}, "com.example.t", [1, -2, 1.5, "x", null], {"k": [true]}]);
        let frame = Frame::new(v.clone());
        let decoded = Serializer::MsgPack
            .decode(&frame.encode(Serializer::MsgPack))
            .unwrap();
        assert_eq!(Value::Array(decoded), v);
    }

    #[test]
    fn cbor_round_trips_a_message() {
        let v = json!([36, 1, 2, {}, [1, -2, 1.5, "x", null, true], {"k": {"n": [1]}}]);
        let frame = Frame::new(v.clone());
        let decoded = Serializer::Cbor
            .decode(&frame.encode(Serializer::Cbor))
            .unwrap();
        assert_eq!(Value::Array(decoded), v);
    }

    #[test]
    fn rejects_what_is_not_a_message() {
        for bad in ["{}", "[]", "[\"x\"]", "nope"] {
            assert!(
                Serializer::Json.decode(&Message::text(bad)).is_err(),
                "{bad}"
            );
        }
        assert!(
            Serializer::Json
                .decode(&Message::binary(vec![1u8]))
                .is_err()
        );
    }

    #[test]
    fn payload_uses_the_shortest_form() {
        let p = Payload::default();
        assert_eq!(p.append_to(vec![json!(50), json!(1)]), json!([50, 1]));
        let p = Payload {
            args: None,
            kwargs: Some(Map::from_iter([("a".to_owned(), json!(1))])),
        };
        assert_eq!(
            p.append_to(vec![json!(50), json!(1)]),
            json!([50, 1, [], {"a": 1}])
        );
    }

    #[test]
    fn uri_rules() {
        assert!(valid_uri("com.example.topic"));
        for bad in ["", "a..b", "a. b", "a.#", ".a"] {
            assert!(!valid_uri(bad), "{bad}");
        }
    }
}
