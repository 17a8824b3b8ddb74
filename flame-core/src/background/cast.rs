//! [`Flame::cast`]: fire and forget, with an acknowledgement that a runner accepted the call.

use crate::call::CallOptions;
use crate::error::{Error, Result};
use crate::flame::Flame;
use crate::method::Method;
use serde::de::IgnoredAny;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use tokio::sync::oneshot;

/// A cast whose delivery failed, as `FlameBuilder::on_cast_error` hooks see it.
#[derive(Debug)]
#[non_exhaustive]
pub struct CastError {
    /// The cast's id.
    pub id: String,
    /// `service/method`.
    pub method: String,
    /// The idempotency key it was delivered with.
    pub idempotency_key: String,
    /// Why it was not delivered.
    pub error: Error,
}

/// A callback for casts that could not be delivered.
pub type CastErrorHook = Arc<dyn Fn(&CastError) + Send + Sync>;

/// A cast on its way (see [`Flame::cast`]). Dropping it is fine: the cast is delivered anyway.
pub struct CastHandle {
    id: String,
    idempotency_key: String,
    accepted: oneshot::Receiver<Result<()>>,
}

impl fmt::Debug for CastHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CastHandle")
            .field("id", &self.id)
            .field("idempotency_key", &self.idempotency_key)
            .finish()
    }
}

impl CastHandle {
    /// The cast's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The idempotency key it is delivered with (given, or made up: one delivery per key).
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }

    /// Waits until a runner has accepted the call (not until it ran), or its delivery failed.
    pub async fn accepted(self) -> Result<()> {
        self.accepted
            .await
            .unwrap_or_else(|_| Err(Error::handler("the cast's delivery task ended without an answer")))
    }
}

impl Flame {
    /// Fire and forget: delivers `method(req)` in the background and returns at once. A runner
    /// acknowledges the call as soon as it has *accepted* it and runs the handler on its own
    /// (its result is dropped; a failure is logged on the runner and counted in its metrics).
    /// Delivery is retried by the call's policy and is idempotent: without a key of your own
    /// (`CallOptions::idempotency_key`) one is made up, so a retried delivery runs the handler
    /// once per runner. Delivery failures go to `FlameBuilder::on_cast_error` hooks and
    /// `tracing`; [`CastHandle::accepted`] waits for the acknowledgement.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use flame_core::{Context, Flame, Method, Registry};
    /// const AUDIT: Method<String, ()> = Method::new("audit", "record");
    /// let registry = Registry::new().handle(AUDIT, |_ctx: Context, event: String| async move {
    ///     println!("audit: {event}");
    ///     Ok(())
    /// });
    /// let flame = Flame::builder(registry).start().await?;
    /// flame.cast(AUDIT, "login".to_string());                        // fire and forget
    /// flame.cast(AUDIT, "logout".to_string()).accepted().await?;     // or wait for the ack
    /// flame.shutdown().await?;
    /// # Ok::<(), flame_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn cast<Req, Resp>(&self, method: Method<Req, Resp>, req: Req) -> CastHandle
    where
        Req: Serialize + Send + 'static,
    {
        self.cast_with(method, req, CallOptions::default())
    }

    /// [`Flame::cast`] with `options` (pool, timeout of the handler, retry policy of the
    /// delivery, idempotency key).
    pub fn cast_with<Req, Resp>(
        &self,
        method: Method<Req, Resp>,
        req: Req,
        options: CallOptions,
    ) -> CastHandle
    where
        Req: Serialize + Send + 'static,
    {
        let id = uuid::Uuid::new_v4().to_string();
        let key = options
            .get_idempotency_key()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("cast-{id}"));
        let mut options = options.idempotency_key(key.clone());
        options.cast = true;
        let (tx, rx) = oneshot::channel();
        let flame = self.clone();
        let (cast_id, cast_key) = (id.clone(), key.clone());
        // The acknowledgement's content is ignored: any handler result type will do.
        let method: Method<Req, IgnoredAny> = method.retyped();
        tokio::spawn(async move {
            let delivered = flame.call_with(method, req, options).await.map(|_| ());
            if let Err(error) = &delivered {
                tracing::warn!(target: "flame::cast", cast = %cast_id, method = %method, %error, "a cast could not be delivered");
                let report = CastError {
                    id: cast_id,
                    method: method.to_string(),
                    idempotency_key: cast_key,
                    error: Error::new(error.code(), error.message()).with_retryable(error.is_retryable()),
                };
                for hook in flame.cast_hooks() {
                    hook(&report);
                }
            }
            let _ = tx.send(delivered);
        });
        CastHandle {
            id,
            idempotency_key: key,
            accepted: rx,
        }
    }
}
