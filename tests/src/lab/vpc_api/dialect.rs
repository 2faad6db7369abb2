//! UCloud's API dialect as its SDKs speak it, byte for byte (sans I/O).
//!
//! A request is a flat map of parameters: `Action`, `PublicKey`, `Signature`, the common
//! `Region`/`Zone`/`ProjectId` and the action's own. The official Python SDK
//! (`ucloud-sdk-python3` 0.11.150, `ucloud/core/client/_client.py`) POSTs them
//! `application/x-www-form-urlencoded`; UCloud's documentation also shows JSON bodies and GET
//! query strings, so all three are read. Nested values are flattened as the SDK's
//! `typesystem/encoder.py` does: a list `K` becomes `K.0`, `K.1`, an object `K.sub`, a bool
//! `true`/`false`, a whole float its integer.
//!
//! `Signature` is the hex SHA1 of every other parameter sorted by name (byte order), each name
//! followed by its value, all concatenated, then the private key (`ucloud/core/auth/_cfg.py`).
//! A reply is JSON, always HTTP 200: `Action` = `<Action>Response`, `RetCode` (0 = success),
//! `Message`, then the action's fields.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

/// A request's parameters, flattened, keyed in the byte order the signature sorts them in.
pub type Params = BTreeMap<String, String>;

/// UCloud's return codes that the lab answers with. The common ones (below 2000) are UCloud's
/// gateway's, from its API documentation (`api/summary/public`); 57000 and 58221 are the VPC
/// service's, as UK8S's CNI meets them; the rest of the 58xxx are the lab's own choice for refusals
/// whose real code is not published (a caller should act on the message, not the number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum RetCode {
    Ok = 0,
    /// "API 请求被限流": the configured rate limit.
    Throttled = 153,
    MissingAction = 160,
    NoSuchAction = 161,
    MissingSignature = 170,
    /// "Signature VerifyAC Error".
    BadSignature = 171,
    /// "User Not Exists": no such `PublicKey`.
    NoSuchUser = 172,
    /// "Params [X] not available": a parameter missing or wrong.
    BadParams = 230,
    NoSuchProject = 292,
    /// The subnet has no free address.
    SubnetFull = 57000,
    /// (lab) No NIC with that MAC in the VPC, or it is not the given host's.
    NoSuchNic = 58100,
    /// (lab) No such VPC or subnet.
    NoSuchSubnet = 58101,
    /// The address is not (or no longer) a secondary address of that NIC.
    IpNotFound = 58221,
    /// (lab) The address is taken (by a host, a primary or another secondary address).
    IpInUse = 58222,
    /// (lab) The NIC holds as many secondary addresses as its quota allows.
    QuotaExceeded = 58223,
}

impl RetCode {
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// A refusal: the code and UCloud's kind of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: RetCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: RetCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }

    /// A parameter missing or not acceptable, as UCloud words it.
    pub fn param(name: &str) -> ApiError {
        ApiError::new(RetCode::BadParams, format!("Params [{name}] not available"))
    }
}

/// What cannot be read as parameters at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("the JSON body is not an object of parameters: {0}")]
    Json(String),
    #[error("the body is larger than a call can be")]
    TooLarge,
}

/// Reads a form body or a query string (`a=1&b=x%3Ay`, `+` for a space).
pub fn parse_form(text: &str, into: &mut Params) -> Result<(), BodyError> {
    let decode = |s: &str| -> Result<String, BodyError> {
        let spaced = s.replace('+', " ");
        percent_decode_str(&spaced).decode_utf8().map(|c| c.into_owned()).map_err(|_| BodyError::NotUtf8)
    };
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        into.insert(decode(key)?, decode(value)?);
    }
    Ok(())
}

/// Reads a JSON object body, flattened as the SDK's encoder flattens.
pub fn parse_json(bytes: &[u8], into: &mut Params) -> Result<(), BodyError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| BodyError::Json(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(BodyError::Json("not an object".into()));
    };
    for (key, value) in map {
        flatten(&key, &value, into);
    }
    Ok(())
}

fn flatten(key: &str, value: &Value, into: &mut Params) {
    match value {
        Value::Object(map) => map.iter().for_each(|(k, v)| flatten(&format!("{key}.{k}"), v, into)),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| flatten(&format!("{key}.{i}"), v, into)),
        Value::Null => {}
        scalar => {
            into.insert(key.to_string(), scalar_text(scalar));
        }
    }
}

/// A scalar as the signature sees it: bools in lower case, a whole float without its fraction.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 && f.abs() < 1e15 {
                format!("{}", f as i64)
            } else {
                f.to_string()
            }
        }
        other => other.to_string(),
    }
}

/// UCloud's signature of `params` (every one but `Signature`) under `private_key`.
pub fn signature(params: &Params, private_key: &str) -> String {
    let mut text = String::new();
    for (key, value) in params.iter().filter(|(k, _)| *k != "Signature") {
        text.push_str(key);
        text.push_str(value);
    }
    text.push_str(private_key);
    hex::encode(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes()))
}

/// A reply envelope: `fields` must be a JSON object (or null for none).
pub fn reply(action: &str, result: Result<Value, ApiError>) -> Value {
    let mut out = Map::new();
    out.insert("Action".into(), Value::String(format!("{action}Response")));
    match result {
        Ok(fields) => {
            out.insert("RetCode".into(), 0.into());
            out.insert("Message".into(), "".into());
            if let Value::Object(fields) = fields {
                out.extend(fields);
            }
        }
        Err(e) => {
            out.insert("RetCode".into(), e.code.code().into());
            out.insert("Message".into(), e.message.into());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of UCloud's signature documentation (`api/summary/signature`).
    #[test]
    fn the_documented_signature() {
        let mut p = Params::new();
        parse_json(
            br#"{"Action": "DescribeUHostInstance", "Region": "cn-bj2", "Limit": 10,
                 "PublicKey": "ucloudsomeone@example.com1296235120854146120"}"#,
            &mut p,
        )
        .unwrap();
        assert_eq!(
            signature(&p, "46f09bb9fab4f12dfc160dae12273d5332b5debe"),
            "cba5cf5ec4d4233d206b1b54951e3787350a642f"
        );
    }

    /// A body captured from ucloud-sdk-python3 0.11.150 (`allocate_secondary_ip`, public key
    /// "pub", private key "priv"): the form encoding and the signature it computed.
    #[test]
    fn a_body_the_python_sdk_sent() {
        let body = "Region=cn-lab&ProjectId=org-lab&Mac=52%3A54%3A00%3Aaa%3Abb%3Acc&ObjectId=uhost-1\
                    &SubnetId=subnet-1&VPCId=uvnet-1&Zone=cn-lab-01&Action=AllocateSecondaryIp\
                    &PublicKey=pub&Signature=d0da97d9163be2b6efafb4b299e479ea932a2693";
        let mut p = Params::new();
        parse_form(body, &mut p).unwrap();
        assert_eq!(p["Mac"], "52:54:00:aa:bb:cc");
        assert_eq!(signature(&p, "priv"), p["Signature"]);
        assert_ne!(signature(&p, "other"), p["Signature"]);
        // Lists and bools as the SDK flattened them for DescribeSubnet.
        let body = "Region=cn-lab&ProjectId=org-lab&ShowAvailableIPs=true&SubnetIds.0=a&SubnetIds.1=b\
                    &Action=DescribeSubnet&PublicKey=pub&Signature=2e31da292774edc04bce42068207fb3b47646cbd";
        let mut p = Params::new();
        parse_form(body, &mut p).unwrap();
        assert_eq!(signature(&p, "priv"), p["Signature"]);
    }

    #[test]
    fn json_is_flattened_like_the_sdk_encoder() {
        let mut p = Params::new();
        parse_json(br#"{"L": ["a", {"x": 1.0}], "O": {"b": true}, "F": 2.5, "N": null}"#, &mut p).unwrap();
        let want: Params =
            [("F", "2.5"), ("L.0", "a"), ("L.1.x", "1"), ("O.b", "true")].map(|(k, v)| (k.into(), v.into())).into();
        assert_eq!(p, want);
        assert!(parse_json(b"[1]", &mut p).is_err());
        assert_eq!(parse_form("a=%ff", &mut p), Err(BodyError::NotUtf8));
    }

    #[test]
    fn replies_carry_the_envelope() {
        let ok = reply("DescribeSubnet", Ok(serde_json::json!({"TotalCount": 1})));
        assert_eq!(
            ok,
            serde_json::json!({"Action": "DescribeSubnetResponse", "RetCode": 0, "Message": "", "TotalCount": 1})
        );
        let err = reply("X", Err(ApiError::new(RetCode::SubnetFull, "full")));
        assert_eq!(err["RetCode"], 57000);
        assert_eq!(err["Message"], "full");
    }
}
