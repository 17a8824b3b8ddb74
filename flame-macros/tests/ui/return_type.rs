// A call can fail on the way, so methods return a `Result`.
#[flame::service]
trait Ping {
    async fn ping(&self);
    async fn count(&self) -> u64;
}

fn main() {}
