pub struct Pool;

#[fleet_macros::actor(concurrency_groups(io = 0))]
impl Pool {
    pub fn new() -> Self {
        Pool
    }
}

fn main() {}
