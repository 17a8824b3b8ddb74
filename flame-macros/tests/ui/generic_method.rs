// The wire carries concrete types: no generic methods, no generic traits.
#[flame::service]
trait Store {
    async fn put<T: serde::Serialize>(&self, value: T) -> flame::Result<()>;
    async fn get(&self, key: String) -> flame::Result<String>
    where
        Self: Sized;
}

#[flame::service]
trait Cache<V> {
    async fn get(&self, key: String) -> flame::Result<V>;
}

fn main() {}
