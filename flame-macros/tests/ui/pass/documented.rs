//! The generated items are documented and warning-free in a crate that denies warnings and
//! missing docs; `crate = "..."` points the generated code at a re-export of flame.
#![deny(warnings, missing_docs)]

/// flame under another path.
pub mod reexport {
    pub use ::flame::*;
}

/// Arithmetic.
#[flame::service(id = "math", crate = "crate::reexport")]
pub trait Math {
    /// Adds.
    async fn add(&self, a: i64, b: i64) -> flame::Result<i64>;
    /// Takes the context; `r#type` is a raw identifier, its wire id is `type`.
    async fn r#type(&self, ctx: flame::Context) -> flame::Result<String>;
}

/// Visible in the crate only: the generated items share the trait's visibility.
#[flame::service]
pub(crate) trait Internal {
    /// Pings.
    async fn ping(&self) -> flame::Result<()>;
}

/// An empty service is allowed (and serves nothing).
#[flame::service]
pub trait Empty {}

struct Impl;

impl Math for Impl {
    async fn add(&self, a: i64, b: i64) -> flame::Result<i64> {
        Ok(a + b)
    }
    async fn r#type(&self, ctx: flame::Context) -> flame::Result<String> {
        Ok(ctx.invocation_id().to_owned())
    }
}

fn main() {
    assert_eq!(MathService::TYPE.method_id(), "type");
    assert_eq!(MathService::METHODS, [("math", "add"), ("math", "type")]);
    assert_eq!(InternalService::SERVICE_ID, "internal");
    assert!(EmptyService::METHODS.is_empty());
    let registry = MathService::registry(Impl);
    assert!(registry.contains("math", "type"));
    let _client: fn(flame::Flame) -> MathClient = MathClient::new;
}
