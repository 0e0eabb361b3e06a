pub struct Pool {
    n: u32,
}

#[fleet_macros::actor(concurrency_groups(io = 4))]
impl Pool {
    pub fn new() -> Self {
        Pool { n: 0 }
    }

    #[group(io)]
    pub fn bump(&mut self) -> u32 {
        self.n += 1;
        self.n
    }
}

fn main() {}
