// Names the generated items already use.
#[flame::service]
trait Factory {
    async fn new(&self) -> flame::Result<u64>;
    async fn service_id(&self) -> flame::Result<String>;
    async fn get_user(&self) -> flame::Result<String>;
    #[allow(non_snake_case)]
    async fn getUser(&self) -> flame::Result<String>;
    type Output;
}

fn main() {}
