//! # flame-macros
//!
//! `#[flame::service]`: define a flame service once, as a trait of `async fn` methods, and get
//! the typed [`Method`] handles, a typed client and the registration of an implementation —
//! in the manner of tarpc. Use it through the facade (`flame::service`); the generated code
//! names `::flame::…`, so the crate that uses it depends on `flame` (or passes
//! `crate = "path"`, see below).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use flame::{Context, Flame, Registry};
//!
//! /// Arithmetic, served as `math`/`add` and `math`/`slow_add`.
//! #[flame::service(id = "math")]
//! pub trait Math {
//!     /// Adds two numbers: `add(ctx, a, b)` on the wire, like the TypeScript reference.
//!     async fn add(&self, a: i64, b: i64) -> flame::Result<i64>;
//!     /// Adds, taking the call's context (deadline, cancellation) as first parameter.
//!     #[flame(timeout_ms = 5000)]
//!     async fn slow_add(&self, ctx: Context, a: i64, b: i64) -> flame::Result<i64>;
//! }
//!
//! struct Calculator;
//!
//! impl Math for Calculator {
//!     async fn add(&self, a: i64, b: i64) -> flame::Result<i64> {
//!         Ok(a + b)
//!     }
//!     async fn slow_add(&self, ctx: Context, a: i64, b: i64) -> flame::Result<i64> {
//!         assert!(ctx.deadline().is_some());
//!         Ok(a + b)
//!     }
//! }
//!
//! let registry = MathService::register(Registry::new(), Calculator);
//! let flame = Flame::builder(registry).start().await?; // local mode by default
//! let math = MathClient::new(flame.clone());
//! assert_eq!(math.add(2, 3).await?, 5);
//! assert_eq!(math.slow_add(4, 5).await?, 9);
//! // The generated handles are ordinary `Method`s:
//! assert_eq!(flame.call(MathService::ADD, (20, 22)).await?, 42);
//! flame.shutdown().await?;
//! # Ok::<(), flame::Error>(())
//! # }).unwrap();
//! ```
//!
//! [`Method`]: https://docs.rs/flame/latest/flame/struct.Method.html

mod case;
mod service;

use proc_macro::TokenStream;

/// Defines a flame service from a trait of `async fn` methods.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use flame::{Error, Flame, Registry};
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// pub enum Refused { TooLong { max: usize } }
///
/// impl std::fmt::Display for Refused {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "refused")
///     }
/// }
///
/// // A typed application error: handlers return it, callers get it back with `app_error`.
/// impl From<Refused> for Error {
///     fn from(r: Refused) -> Error { Error::app(r) }
/// }
///
/// #[flame::service] // service id: `text_tools` (the trait name in snake_case)
/// pub trait TextTools {
///     #[flame(id = "upper", pool = "default")]
///     async fn to_upper(&self, text: String) -> Result<String, Refused>;
///     async fn ping(&self) -> Result<(), Error>;
/// }
///
/// struct Tools;
///
/// impl TextTools for Tools {
///     async fn to_upper(&self, text: String) -> Result<String, Refused> {
///         if text.len() > 5 { return Err(Refused::TooLong { max: 5 }); }
///         Ok(text.to_uppercase())
///     }
///     async fn ping(&self) -> Result<(), Error> { Ok(()) }
/// }
///
/// assert_eq!(TextToolsService::TO_UPPER.method_id(), "upper");
/// let flame = Flame::builder(TextToolsService::registry(Tools)).start().await?;
/// let tools = TextToolsService::SERVICE_ID;
/// assert_eq!(tools, "text_tools");
/// let client = TextToolsClient::new(flame.clone());
/// assert_eq!(client.to_upper("abc".into()).await?, "ABC");
/// let err = client.to_upper("abcdefgh".into()).await.unwrap_err();
/// assert_eq!(err.app_error::<Refused>(), Some(Refused::TooLong { max: 5 }));
/// client.ping().await?;
/// # flame.shutdown().await?;
/// # Ok::<(), flame::Error>(())
/// # }).unwrap();
/// ```
///
/// # What you write
///
/// A trait whose methods are all `async fn(&self, ...) -> Result<T, E>`:
///
/// - **Arguments** are owned serde types. They travel as *positional* arguments: a method
///   `add(&self, a: i64, b: i64)` has the request type `(i64, i64)` and sends `[a, b]`, so it
///   interoperates with the TypeScript reference's handler `add(ctx, a, b)`. One argument `x`
///   has the request type `(T,)` and sends `[x]` (the same wire as a plain `T`, and also right
///   when `T` is itself a tuple); no argument is `()` and sends `[]`.
/// - **The context**: a first parameter of type `Context` (or `flame::Context`) receives the
///   call's [`Context`] (deadline, cancellation, attempt, idempotency key, trace). It is not an
///   argument on the wire and not a parameter of the client method.
/// - **The result** is `Result<T, E>` (or `flame::Result<T>`) where `T` is a serde type and
///   `E` is `flame::Error` or any type with `Into<flame::Error>`; implement
///   `From<MyError> for flame::Error` with `Error::app` to send a typed application error that
///   the caller reads back with `err.app_error::<MyError>()`.
/// - **Ids**: the service id is `#[flame::service(id = "...")]`, by default the trait name in
///   snake_case (`TextTools` → `text_tools`). A method's id is its name, or
///   `#[flame(id = "...")]`; `#[flame(pool = "...")]`, `#[flame(timeout_ms = N)]` and
///   `#[flame(retries = N)]` set the method's default pool, timeout and retry policy
///   (`RetryPolicy::attempts(N + 1)`; a call's `CallOptions` still override them);
///   `#[flame(max_request_bytes = N, max_response_bytes = N)]` its payload limits over the
///   global defaults (`Method::with_max_request_bytes`, `Method::with_max_response_bytes`).
/// - **A streamed result**: a method returning `Result<flame::ItemStream<T>, E>` streams its
///   items (`ItemStream<T>` is a boxed `Stream<Item = flame::Result<T>>`): its const is a
///   `Method<Req, flame::Streamed<T>>`, its handler is registered with
///   `Registry::handle_stream`, and its client method returns a `flame::CallStream<T>` at once
///   (the items arrive as the handler yields them; dropping it cancels the call).
/// - `#[flame::service(crate = "path")]` makes the generated code name `path::…` instead of
///   `::flame::…`, for a crate that reaches flame under another name.
///
/// Implement the trait with plain `async fn`s. The generated trait declares each method as
/// `fn … -> impl Future<Output = …> + Send` and has the supertraits `Send + Sync + 'static`, so
/// every handler can run on any task: the compiler checks that your `async fn` bodies are
/// `Send`.
///
/// # What you get
///
/// For `trait Math` (any visibility; the generated items share it):
///
/// - the trait, as above;
/// - `MathService`, a unit struct holding `MathService::SERVICE_ID`, one
///   `Method<Req, Resp>` const per method named after it in upper case (`MathService::ADD`,
///   usable with `Flame::call` like any hand-written `Method`), `MathService::METHODS` (every
///   id pair), `MathService::registry(service) -> Registry`,
///   `MathService::register(registry, service) -> Registry` and
///   `MathService::try_register(&mut registry, service) -> flame::Result<()>`;
/// - `MathClient`, a typed client: `MathClient::new(flame)`, `.with_options(CallOptions)`,
///   `.options()`, and one `async fn` per method with the same name and wire arguments (no
///   context) returning `flame::Result<T>` (a streaming method: a plain `fn` returning
///   `flame::CallStream<T>`), plus `spawn_<method>` for each method with one result.
///
/// # Compile errors
///
/// The macro rejects, with an error at the offending span: methods that are not `async`,
/// that do not take `&self`, that are generic or have a `where` clause; a generic trait;
/// argument or result types the wire cannot carry (references, `impl Trait`, trait objects,
/// function pointers, `Self`); a return type that is not a `Result`; a context parameter that
/// is not first or is borrowed; two methods with the same id; method names the client uses
/// (`new`, `with_options`, `options`) or that would clash as consts; unknown options.
///
/// [`Context`]: https://docs.rs/flame/latest/flame/struct.Context.html
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match service::expand(attr.into(), item.clone()) {
        Ok(tokens) => tokens.into(),
        Err(e) => {
            // Keep the trait (without our helper attributes) so the errors are only ours.
            let mut out = e.to_compile_error();
            out.extend(service::fallback(item));
            out.into()
        }
    }
}
