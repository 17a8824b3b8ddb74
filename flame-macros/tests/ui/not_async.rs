// A service method must be `async fn`.
#[flame::service]
trait Math {
    fn add(&self, a: i64, b: i64) -> flame::Result<i64>;
}

fn main() {}
