// Unknown or malformed options are errors, not silently ignored.
#[flame::service(name = "math")]
trait A {
    async fn a(&self) -> flame::Result<()>;
}

#[flame::service(id = "")]
trait B {
    async fn b(&self) -> flame::Result<()>;
}

#[flame::service]
trait C {
    #[flame(timeout_ms = 0)]
    async fn zero(&self) -> flame::Result<()>;
    #[flame(pool = "gpu", pool = "cpu")]
    async fn twice(&self) -> flame::Result<()>;
    #[flame(priority = 3)]
    async fn unknown(&self) -> flame::Result<()>;
    #[flame(timeout_ms = "5s")]
    async fn text(&self) -> flame::Result<()>;
    #[flame(max_request_bytes = 0)]
    async fn no_room(&self) -> flame::Result<()>;
}

#[flame::service]
struct NotATrait;

fn main() {}
