//! `#[flame::service]` refuses, with a clear error at the offending span, what the wire cannot
//! carry. The expected messages are in `tests/ui/*.stderr` (regenerate with
//! `TRYBUILD=overwrite cargo test -p flame-macros --test compile_fail`, then review them).

#[test]
fn service_macro_compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    // And what it accepts compiles without a warning, docs included.
    t.pass("tests/ui/pass/*.rs");
}
