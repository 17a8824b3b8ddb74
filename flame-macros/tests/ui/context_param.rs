// The call context is an optional first parameter, taken by value.
use flame::Context;

#[flame::service]
trait Jobs {
    async fn later(&self, id: u64, ctx: Context) -> flame::Result<()>;
    async fn borrowed(&self, ctx: &Context) -> flame::Result<()>;
}

fn main() {}
