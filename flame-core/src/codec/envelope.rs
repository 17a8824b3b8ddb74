//! The request and response envelopes of wire protocol v1 (DESIGN.md §8).

use crate::error::{Error, ErrorCode, Result};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The JSON body of `POST /invoke`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvocationRequest {
    /// Unique per attempt (UUID v4).
    pub invocation_id: String,
    /// The method's service id.
    pub service_id: String,
    /// The method's method id.
    pub method_id: String,
    /// superjson text of the positional-argument array.
    pub args: String,
    /// Issued-at, milliseconds since the Unix epoch.
    #[serde(deserialize_with = "millis")]
    pub iat: u64,
    /// Expiry, milliseconds since the Unix epoch.
    #[serde(deserialize_with = "millis")]
    pub exp: u64,
    /// The runner aborts the handler after this many milliseconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_millis"
    )]
    pub timeout_ms: Option<u64>,
    /// A call with a key the runner has already run is not run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Trace context, e.g. W3C `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<BTreeMap<String, String>>,
    /// The attempt number, 1 for the first (a flame-rs field; the TypeScript reference ignores
    /// it and a request without it is attempt 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// A cast: acknowledge once accepted, run the handler in the background (a flame-rs
    /// field; the reference ignores it and runs the call as usual).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cast: Option<bool>,
    /// A streamed result is wanted (a flame-rs field, binary codec only; the reference has no
    /// streamed results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// The sender's request sequence, `<sender>.<n>` (16 hex digits, a decimal counter from 1):
    /// a flame-rs runner rejects replays with a sliding window per sender instead of
    /// remembering every `invocationId` (a flame-rs field; the reference ignores it, and a
    /// request without it goes through the id cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<String>,
}

/// The error object of an `ok:false` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    /// Lower-case wire code, e.g. `handler_error`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Optional details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    /// Whether the caller may retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

/// The JSON body of a 200 reply: `{"ok":true,"result":…}` or `{"ok":false,"error":…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationResponse {
    /// Success flag.
    pub ok: bool,
    /// superjson text of the result, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The error, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

/// Key under `details` that carries a typed application error across the wire.
pub const APP_ERROR_KEY: &str = "flameAppError";

impl InvocationResponse {
    /// A success carrying superjson result text.
    pub fn success(result: String) -> Self {
        InvocationResponse {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// A failure. Details are sent only when `expose_details` is set, except a typed
    /// application error, which its handler returned on purpose and is always sent.
    pub fn failure(err: &Error, expose_details: bool) -> Self {
        let mut details = if expose_details {
            err.details().cloned()
        } else {
            None
        };
        if let Some(app) = err.app_value() {
            let mut map = serde_json::Map::new();
            if let Some(d) = details.take() {
                map.insert("details".into(), d);
            }
            map.insert(APP_ERROR_KEY.into(), app.clone());
            details = Some(Value::Object(map));
        }
        InvocationResponse {
            ok: false,
            result: None,
            error: Some(WireError {
                code: err.wire_code().to_owned(),
                message: err.message().to_owned(),
                details,
                retryable: Some(err.is_retryable()),
            }),
        }
    }

    /// Turns the envelope into the superjson result text or the remote error.
    pub fn into_result(self) -> Result<String> {
        match (self.ok, self.result, self.error) {
            (true, Some(r), _) => Ok(r),
            (true, None, _) => Err(Error::serialization("runner replied ok without a result")),
            (false, _, Some(e)) => Err(e.into_error()),
            (false, _, None) => Err(Error::new(
                ErrorCode::Remote,
                "runner replied ok:false without an error",
            )),
        }
    }
}

impl WireError {
    /// Converts to an [`Error`], keeping the remote code text.
    pub fn into_error(self) -> Error {
        let code = ErrorCode::from_wire(&self.code);
        let mut err = Error::new(code, self.message).with_remote_code(self.code);
        if let Some(r) = self.retryable {
            err = err.with_retryable(r);
        }
        if let Some(mut details) = self.details {
            if let Some(app) = details.as_object_mut().and_then(|m| m.remove(APP_ERROR_KEY)) {
                err = err.with_app_value(app);
                if let Some(inner) = details.as_object_mut().and_then(|m| m.remove("details")) {
                    err = err.with_details(inner);
                }
            } else {
                err = err.with_details(details);
            }
        }
        err
    }
}

fn millis<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    number_to_millis(&n)
        .ok_or_else(|| serde::de::Error::custom(format!("`{n}` is not a time in milliseconds")))
}

fn opt_millis<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => number_to_millis(&n)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("`{n}` is not a duration in milliseconds"))),
    }
}

fn number_to_millis(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1.0e17)
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden: the body the reference's `buildInvocationRequest` writes (key order of its object).
    const REFERENCE_BODY: &str = r#"{"invocationId":"6f1c1f6e-5a43-4d0e-9d1c-2f6b8a9e0c11","serviceId":"math","methodId":"add","args":"{\"json\":[2,3]}","iat":1764230400000,"exp":1764230460000,"timeoutMs":60000,"idempotencyKey":"k1"}"#;

    #[test]
    fn reference_request_decodes_and_re_encodes_byte_for_byte() {
        let req: InvocationRequest = serde_json::from_str(REFERENCE_BODY).unwrap();
        assert_eq!(req.service_id, "math");
        assert_eq!(req.args, r#"{"json":[2,3]}"#);
        assert_eq!(req.timeout_ms, Some(60000));
        assert_eq!(serde_json::to_string(&req).unwrap(), REFERENCE_BODY);
    }

    #[test]
    fn float_times_are_accepted_and_bad_times_rejected() {
        let body = r#"{"invocationId":"x","serviceId":"s","methodId":"m","args":"{\"json\":[]}","iat":1.5,"exp":2e3}"#;
        let req: InvocationRequest = serde_json::from_str(body).unwrap();
        assert_eq!((req.iat, req.exp), (1, 2000));
        let bad = body.replace("1.5", "-4");
        assert!(serde_json::from_str::<InvocationRequest>(&bad).is_err());
    }

    #[test]
    fn reference_responses_decode() {
        let ok: InvocationResponse = serde_json::from_str(r#"{"ok":true,"result":"{\"json\":5}"}"#).unwrap();
        assert_eq!(ok.into_result().unwrap(), r#"{"json":5}"#);
        let err: InvocationResponse = serde_json::from_str(
            r#"{"ok":false,"error":{"code":"handler_error","message":"boom","retryable":false}}"#,
        )
        .unwrap();
        let e = err.into_result().unwrap_err();
        assert_eq!(e.code(), ErrorCode::Handler);
        assert_eq!(e.wire_code(), "handler_error");
        assert!(!e.is_retryable());
    }

    #[test]
    fn app_errors_survive_the_wire_even_with_details_hidden() {
        let e = Error::handler("declined")
            .with_app_value(serde_json::json!({"code": 7}))
            .with_details(serde_json::json!("secret"));
        let wire = InvocationResponse::failure(&e, false);
        let text = serde_json::to_string(&wire).unwrap();
        assert!(!text.contains("secret"));
        let back: InvocationResponse = serde_json::from_str(&text).unwrap();
        let e2 = back.into_result().unwrap_err();
        assert_eq!(e2.app_value(), Some(&serde_json::json!({"code": 7})));
    }
}
