// Methods take `&self`: one instance serves concurrent calls.
#[flame::service]
trait Counter {
    async fn bump(&mut self) -> flame::Result<u64>;
    async fn consume(self) -> flame::Result<u64>;
    async fn make(start: u64) -> flame::Result<u64>;
}

fn main() {}
