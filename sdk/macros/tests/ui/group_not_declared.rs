pub struct Pool;

#[fleet_macros::actor(concurrency_groups(io = 4))]
impl Pool {
    pub fn new() -> Self {
        Pool
    }

    #[group(gpu)]
    pub async fn render(&self) -> u32 {
        1
    }
}

fn main() {}
