// Handlers run on any task: an implementation whose future is not `Send` is refused.
use std::rc::Rc;

#[flame::service]
trait Math {
    async fn add(&self, a: i64, b: i64) -> flame::Result<i64>;
}

struct Local;

impl Math for Local {
    async fn add(&self, a: i64, b: i64) -> flame::Result<i64> {
        let shared = Rc::new(a);
        tokio::task::yield_now().await;
        Ok(*shared + b)
    }
}

fn main() {}
