#[fleet_macros::remote(num_returns = 0)]
fn nothing() {}

fn main() {}
