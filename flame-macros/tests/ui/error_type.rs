// The error type converts into `flame::Error` (implement `From<E> for flame::Error`).
#[flame::service]
trait Math {
    async fn add(&self, a: i64, b: i64) -> Result<i64, String>;
}

fn main() {}
