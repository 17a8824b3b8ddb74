//! Scenario 6 — property tests over the decoders and the signature check: arbitrary and
//! mutated input never panics, never runs a handler, and a wrong signature is never accepted
//! (also over HTTP, against an in-process flame-http runner). `fuzz/` holds the matching
//! `cargo fuzz` target for longer runs.
#![allow(clippy::unwrap_used)]

use flame_core::codec::{self, superjson, InvocationRequest};
use flame_core::{Config, Context, Dispatcher, Method, Registry, Secret};
use flame_http::sign::{sign, verify};
use flame_http::{HttpServer, ServerOptions};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const ECHO: Method<(i64, String), String> = Method::new("p", "echo");

fn counting_registry(runs: Arc<AtomicUsize>) -> Registry {
    Registry::new().handle(ECHO, move |_c: Context, (n, s): (i64, String)| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(format!("{n}{s}"))
        }
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn good_envelope(n: i64, s: &str) -> InvocationRequest {
    flame_reliability::wire::envelope("p", "echo", &codec::encode_args(&(n, s.to_owned())).unwrap())
}

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z.]{0,4}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const ANNOTATIONS: [&str; 9] = [
    "Date",
    "undefined",
    "bigint",
    "map",
    "set",
    "regexp",
    "number",
    "symbol",
    "Error",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn envelope_decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = serde_json::from_slice::<InvocationRequest>(&bytes);
    }

    #[test]
    fn superjson_decoders_never_panic_on_text(text in "(?s).{0,512}") {
        let _ = superjson::decode(&text);
        let _ = codec::decode_arg_values(&text);
        let _ = codec::decode_args::<(i64, String)>(&text);
        let _ = codec::decode_result::<Value>(&text);
    }

    #[test]
    fn superjson_accepts_exactly_date_and_undefined(
        value in json_value(),
        annotations in prop::collection::vec((0usize..ANNOTATIONS.len(), "[a-z0-9]{1,3}"), 0..4),
        nested_class in any::<bool>(),
    ) {
        // One annotation per path: a later one for the same path replaces the earlier, in the
        // tree and in what decides whether the payload is supported.
        let kinds: std::collections::BTreeMap<&str, usize> =
            annotations.iter().map(|(i, path)| (path.as_str(), *i)).collect();
        let mut tree = serde_json::Map::new();
        for (path, i) in &kinds {
            tree.insert((*path).to_owned(), json!([ANNOTATIONS[*i]]));
        }
        if nested_class {
            tree.insert("c".into(), json!([["class", "Evil"]]));
        }
        let text = json!({"json": value.clone(), "meta": {"values": tree, "v": 1}}).to_string();
        let allowed = !nested_class && kinds.values().all(|i| *i < 2);
        match superjson::decode(&text) {
            Ok(decoded) => {
                prop_assert!(allowed, "accepted an unsupported annotation: {text}");
                prop_assert_eq!(decoded, value);
            }
            Err(e) => {
                prop_assert!(!allowed, "rejected a supported payload {text}: {e}");
                prop_assert_eq!(e.code(), flame_core::ErrorCode::Serialization);
            }
        }
    }

    /// Numbers cross the wire bit-exact (serde_json's `float_roundtrip`: without it, values
    /// such as 2.0932641042283662e-259 came back 1 ULP off).
    #[test]
    fn f64_arguments_cross_the_wire_bit_exact(f in any::<f64>().prop_filter("finite", |f| f.is_finite()), n in any::<i64>()) {
        let text = codec::encode_args(&(f, n)).unwrap();
        let (back, m): (f64, i64) = codec::decode_args(&text).unwrap();
        prop_assert_eq!(back.to_bits(), f.to_bits());
        prop_assert_eq!(m, n);
        let result: f64 = codec::decode_result(&codec::encode_result(&f).unwrap()).unwrap();
        prop_assert_eq!(result.to_bits(), f.to_bits());
    }

    #[test]
    fn dispatcher_never_panics_and_runs_nothing_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let runs = Arc::new(AtomicUsize::new(0));
        let d = Arc::new(Dispatcher::new(counting_registry(runs.clone()), "prop"));
        let reply = runtime().block_on(d.dispatch_bytes(&bytes));
        prop_assert!(matches!(reply.status, 200 | 400 | 401 | 404));
        prop_assert_eq!(runs.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn mutated_envelopes_never_panic(n in any::<i64>(), s in ".{0,16}", at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let runs = Arc::new(AtomicUsize::new(0));
        let d = Arc::new(Dispatcher::new(counting_registry(runs.clone()), "prop"));
        let mut bytes = serde_json::to_vec(&good_envelope(n, &s)).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let reply = runtime().block_on(d.dispatch_bytes(&bytes));
        // A mutation can leave the request valid (e.g. inside the string): then it ran once.
        prop_assert!(runs.load(Ordering::SeqCst) <= 1);
        // A mutated iat/exp can fall outside the window: 401, nothing runs.
        prop_assert!(matches!(reply.status, 200 | 400 | 401 | 404));
    }

    #[test]
    fn a_wrong_signature_is_never_accepted(
        secret in ".{0,40}",
        other_secret in ".{0,40}",
        body in prop::collection::vec(any::<u8>(), 0..512),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let key = Secret::new(secret.clone());
        let sig = sign(&key, &body);
        prop_assert!(verify(&key, &body, &sig));
        // One bit off in the signature.
        let mut raw: Vec<u8> = (0..sig.len()).step_by(2).map(|i| u8::from_str_radix(&sig[i..i + 2], 16).unwrap()).collect();
        let i = flip.index(raw.len());
        raw[i] ^= 1 << bit;
        let bad: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        prop_assert!(!verify(&key, &body, &bad));
        // Truncated or extended.
        prop_assert!(!verify(&key, &body, &sig[..sig.len() - 2]));
        let extended = format!("{}00", sig);
        prop_assert!(!verify(&key, &body, &extended));
        prop_assert!(!verify(&key, &body, ""));
        // One bit off in the body.
        if !body.is_empty() {
            let mut changed = body.clone();
            let j = flip.index(changed.len());
            changed[j] ^= 1 << bit;
            prop_assert!(!verify(&key, &changed, &sig));
        }
        // Another secret. (HMAC pads a key shorter than a block with zero bytes, so keys that
        // differ only in trailing NULs are the same key: RFC 2104 §2.)
        if other_secret.trim_end_matches('\0') != secret.trim_end_matches('\0') {
            prop_assert!(!verify(&Secret::new(other_secret), &body, &sig));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Over HTTP: a signed request with one bit of its body flipped is refused with 401 and
    /// runs nothing; the unmodified request runs once.
    #[test]
    fn over_http_a_tampered_body_is_refused(n in any::<i64>(), s in "[a-z]{0,16}", flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let rt = runtime();
        rt.block_on(async {
            let runs = Arc::new(AtomicUsize::new(0));
            let dispatcher = Arc::new(Dispatcher::new(counting_registry(runs.clone()), "prop-http"));
            let mut config = Config::default();
            config.secret = Some(Secret::new("prop-secret"));
            config.listen = Some("127.0.0.1:0".parse().unwrap());
            let server = HttpServer::with_options(ServerOptions::default().announce(false).handle_signals(false));
            let bound = server.bind(dispatcher, &config).await.unwrap();
            let addr = bound.local_addr().to_string();
            let stop = tokio_util::sync::CancellationToken::new();
            let serving = tokio::spawn(bound.run(stop.clone()));

            let body = serde_json::to_vec(&good_envelope(n, &s)).unwrap();
            let sig = sign(&Secret::new("prop-secret"), &body);
            let mut tampered = body.clone();
            let i = flip.index(tampered.len());
            tampered[i] ^= 1 << bit;
            let t = std::time::Duration::from_secs(5);
            let w = flame_reliability::wire::exchange(&addr, &flame_reliability::wire::post_invoke(&addr, &tampered, Some(&sig), &[]), t).await.unwrap();
            assert_eq!(w.status, Some(401), "{}", w.text);
            assert_eq!(runs.load(Ordering::SeqCst), 0);
            let ok = flame_reliability::wire::exchange(&addr, &flame_reliability::wire::post_invoke(&addr, &body, Some(&sig), &[]), t).await.unwrap();
            assert_eq!(ok.status, Some(200), "{}", ok.text);
            assert_eq!(runs.load(Ordering::SeqCst), 1);
            stop.cancel();
            serving.await.unwrap().unwrap();
        });
    }
}
