#[fleet_macros::remote(num_returns = 2)]
fn halves(x: u64) -> u64 {
    x / 2
}

fn main() {}
