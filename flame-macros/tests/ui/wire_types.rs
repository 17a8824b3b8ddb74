// Arguments and results travel on the wire: owned, concrete types only.
#[flame::service]
trait Text {
    async fn upper(&self, text: &str) -> flame::Result<String>;
    async fn first(&self, items: Vec<String>) -> flame::Result<&'static str>;
    async fn show(&self, value: impl std::fmt::Display) -> flame::Result<String>;
    async fn boxed(&self, value: Box<dyn std::any::Any>) -> flame::Result<()>;
    async fn same(&self, other: Self) -> flame::Result<()>;
}

fn main() {}
