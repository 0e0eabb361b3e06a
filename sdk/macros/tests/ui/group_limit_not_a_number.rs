pub struct Pool;

#[fleet_macros::actor(concurrency_groups(io = "eight"))]
impl Pool {
    pub fn new() -> Self {
        Pool
    }
}

fn main() {}
