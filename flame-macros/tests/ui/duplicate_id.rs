// Two methods may not share a wire id.
#[flame::service(id = "math")]
trait Math {
    async fn add(&self, a: i64, b: i64) -> flame::Result<i64>;
    #[flame(id = "add")]
    async fn plus(&self, a: i64, b: i64) -> flame::Result<i64>;
}

fn main() {}
