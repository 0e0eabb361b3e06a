#[fleet_macros::actor(concurrency_groups(io = 4))]
pub struct Pool;

fn main() {}
