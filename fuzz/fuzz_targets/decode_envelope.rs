//! Fuzzes the runner-side decoders of wire protocol v1: the request envelope, the superjson
//! argument text inside it (positional arguments, meta annotations), and superjson result
//! text. None may panic, whatever the bytes.
#![no_main]

use flame_core::codec::{self, superjson, InvocationRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<InvocationRequest>(data) {
        let _ = codec::decode_arg_values(&req.args);
        let _ = codec::decode_args::<(i64, String)>(&req.args);
        let _ = codec::decode_args::<serde_json::Value>(&req.args);
        let _ = serde_json::to_vec(&req);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = superjson::decode(text);
        let _ = codec::decode_result::<serde_json::Value>(text);
        let _ = codec::decode_args::<((), Option<u8>)>(text);
    }
});
